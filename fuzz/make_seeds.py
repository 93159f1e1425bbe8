#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/ (run with .venv/bin/python from the repository root after
`make models`; the seeds are committed, so `make fuzz` does not need this). Each target's input
format is described at the top of its fuzz_targets/<target>.rs."""
import json
import os
import struct

C = 'fuzz/corpus'


def w(target, name, data):
    os.makedirs(f'{C}/{target}', exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(f'{C}/{target}/{name}', 'wb') as f:
        f.write(data)


def registry():
    w('registry', 'workspace.toml', open('registry.toml').read())
    w('registry', 'both_tables.toml', '# header\n[text]\nmistral = "llama"\nqwen2 = "llama"\n\n[vision]\nmistral3 = "mistral3"\n')
    w('registry', 'bad_value.toml', '[text]\na = "b"\nc = 3\n')
    w('registry', 'unknown_table.toml', '[text]\na = "b"\n[bogus]\nx = "y"\n')
    w('registry', 'path_escape.toml', '[text]\na = "../evil"\n"quoted key" = "lib.v2"\n')
    w('registry', 'inline.toml', 'text = { llama = "llama", "" = "x" }\nvision = {}\n')


# A Gemma-style template: turn markers, the system text folded into the first user turn, image
# parts as placeholders.
GEMMA_STYLE = """{{ bos_token }}{% set first = 0 %}{% if messages[0]['role'] == 'system' %}\
{% set sys = messages[0]['content'] ~ '\\n\\n' %}{% set first = 1 %}{% else %}{% set sys = '' %}{% endif %}
{% for m in messages[first:] %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}\
<start_of_turn>{{ role }}
{% if loop.first %}{{ sys }}{% endif %}{% if m['content'] is string %}{{ m['content'] | trim }}{% else %}\
{% for part in m['content'] %}{% if part['type'] == 'image' %}<start_of_image>{% elif part['type'] == 'text' %}\
{{ part['text'] | trim }}{% endif %}{% endfor %}{% endif %}<end_of_turn>
{% endfor %}{% if add_generation_prompt %}<start_of_turn>model
{% endif %}"""


def chat_template():
    def t(name, flags, template, args, msgs):
        parts = [template, args] + [x for m in msgs for x in m]
        w('chat_template', name, bytes([flags]) + '\0'.join(parts).encode())

    msgs = [('system', 'You are helpful.'), ('user', 'Hi there'), ('assistant', 'Hello!'), ('user', 'What is 2+2?')]
    tc = json.load(open('models/smollm2-135m-instruct/f32/tokenizer_config.json'))
    t('smollm2.bin', 1, tc['chat_template'], '{}', msgs)
    t('gemma_style.bin', 1 | (2 << 1), GEMMA_STYLE, '{"enable_thinking": false}', msgs)
    t('tools.bin', 3, '{% for m in messages %}{{ m.role }}: {{ m.content | tojson(indent=2) }}\n{% endfor %}'
      '{% if tools %}{{ tools | tojson(sort_keys=true) }}{% endif %}{% if add_generation_prompt %}assistant:{% endif %}',
      '{"tools": [{"name": "f", "parameters": {"x": 1, "<": "&"}}]}', [('user', 'look at this')])
    t('loops.bin', 0, '{% for i in range(1000) %}{% for j in range(1000) %}{{ i * j }}{% endfor %}{% endfor %}', '', [])
    t('raise.bin', 0, '{% if messages[0].role != "user" %}{{ raise_exception("first must be user") }}{% endif %}'
      '{%- generation -%}x{%- endgeneration -%}', '', [('system', 's')])
    t('methods.bin', 0, '{{ strftime_now("%Y-%m-%d %A %j %%") }}{% for m in messages %}'
      '{{ m.content.strip().split(" ")|join("_")|upper }}{{ m.content.startswith("a") }}'
      '{{ "%s-%d"|format(m.role, loop.index) }}{% endfor %}{{ bos_token ~ eos_token }}',
      '{"bos_token": "<b>"}', [('user', '  a b c  ')])
    t('growth.bin', 0, '{% set s = namespace(v="ab") %}{% for i in range(40) %}{% set s.v = s.v ~ s.v %}{% endfor %}'
      '{{ s.v|length }}', '', [])


def detokenizer_stop():
    def ids(*xs):
        return b''.join(struct.pack('<H', x) for x in xs)

    def bl(b):  # byte-level fixture: id of a raw byte
        return 3 + b

    euro = [bl(b) for b in '€'.encode()]
    emoji = [bl(b) for b in '😀'.encode()]
    hello, space_world, im_start, im_end, eot = 262, 267, 1, 2, 0
    w('detokenizer_stop', 'bl_hello_world.bin', bytes([0]) + ids(hello, space_world, bl(ord('!')), *emoji, im_end))
    w('detokenizer_stop', 'bl_invalid_then_char.bin', bytes([0]) + ids(*([bl(0x80)] * 7), *euro, bl(ord('a'))))
    w('detokenizer_stop', 'bl_stop_substring.bin', bytes([0b0100, 0x03, 0x02]) + ids(hello, space_world, *euro, hello))
    w('detokenizer_stop', 'bl_stop_raw.bin', bytes([0b1000, 0x80 | 3, *b'STOP', 0x84, *'€😀'.encode()[:5]])
      + ids(hello, *[bl(c) for c in b'STOP'], space_world))
    w('detokenizer_stop', 'bl_skip_special.bin', bytes([0b0110, 0x01, 0x00])
      + ids(im_start, hello, im_end, bl(0xE2), eot, bl(0x82), bl(0xAC), im_end))

    def sp(b):  # SentencePiece fixture: id of a <0xNN> byte token
        return 3 + b

    sp_hello_, sp_world_, sp_bang, sp_space, sp_hello, end_of_turn, bos = 274, 277, 267, 259, 273, 278, 1
    w('detokenizer_stop', 'sp_pieces.bin', bytes([1]) + ids(sp_hello_, sp_world_, sp_bang, sp_space, sp_space, sp_hello,
                                                             *[sp(b) for b in '😀'.encode()], end_of_turn))
    w('detokenizer_stop', 'sp_stop.bin', bytes([0b0101, 0x02, 0x01]) + ids(bos, sp_hello_, sp_world_, end_of_turn, sp_hello_))


def llava_seeds(cfg):
    """The generic VLM fallback's configs: the tiny llava checkpoints' and two variants."""
    import sys
    sys.path.insert(0, 'scripts/goldens')
    import tiny_models
    cfg('config_llava', 'tiny_llava.json', 0, tiny_models.TINY_LLAVA)
    cfg('config_llava', 'tiny_llava_qwen2.json', 1 << 1, tiny_models.TINY_LLAVA_QWEN2)
    cfg('config_llava', 'layer_list_v5_names.json', 0, {
        **tiny_models.TINY_LLAVA, 'image_token_id': 5, 'vision_feature_layer': [-2, -1],
        'vision_config': {**tiny_models.TINY_LLAVA['vision_config'], 'model_type': 'dinov2'}})


def configs():
    def cfg(target, name, flags, obj):
        w(target, name, bytes([flags]) + json.dumps(obj, indent=1).encode())

    gguf = 1 | (2 << 1)  # a GGUF description, GGUF weights format
    sm = json.load(open('models/smollm2-135m-instruct/f32/config.json'))
    cfg('config_llama', 'smollm2.json', 0, sm)
    cfg('config_llama', 'smollm2_hf.json', 1 << 1, sm)
    cfg('config_llama', 'qwen2_quantized.json', 0, {**sm, 'model_type': 'qwen2', 'quantization': {
        'group_size': 64, 'bits': 4, 'model.layers.0.mlp.down_proj': {'group_size': 32, 'bits': 8}}})
    cfg('config_llama', 'llama3_rope.json', 0, {**sm, 'num_key_value_heads': 0, 'rope_scaling': {
        'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
        'original_max_position_embeddings': 8192}})
    cfg('config_llama', 'text_config.json', 0, {'model_type': 'mistral3', 'text_config': {**sm, 'model_type': 'mistral'},
                                                'vision_config': {'model_type': 'pixtral'}})
    cfg('config_llama', 'gguf_qwen2.json', gguf, {'metadata': {
        'general.architecture': 'qwen2', 'qwen2.block_count': 2, 'qwen2.embedding_length': 64,
        'qwen2.feed_forward_length': 128, 'qwen2.attention.head_count': 4, 'qwen2.attention.head_count_kv': 2,
        'qwen2.rope.freq_base': 1000000.0, 'qwen2.context_length': 32768, 'qwen2.rope.scaling.type': 'linear',
        'qwen2.rope.scaling.factor': 4.0, 'tokenizer.ggml.tokens': {'strings': 100}},
        'tensors': {'lm_head.weight': [100, 64]}})
    cfg('config_llama', 'gguf_llama_heads0.json', gguf, {'metadata': {
        'general.architecture': 'llama', 'llama.block_count': 1, 'llama.embedding_length': 64,
        'llama.feed_forward_length': 128, 'llama.attention.head_count': 0, 'tokenizer.ggml.tokens': {'strings': 10}},
        'tensors': {}})
    # Tiny configs, which the targets also build (with probe weights) and run.
    tiny = {'model_type': 'llama', 'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 2,
            'num_attention_heads': 2, 'num_key_value_heads': 1, 'head_dim': 8, 'rms_norm_eps': 1e-5,
            'vocab_size': 32, 'max_position_embeddings': 64, 'tie_word_embeddings': True}
    cfg('config_llama', 'tiny_llama.json', 0, tiny)
    cfg('config_llama', 'tiny_qwen3_untied.json', 1 << 1, {**tiny, 'model_type': 'qwen3', 'tie_word_embeddings': False})
    cfg('config_llama', 'tiny_qwen2_bias.json', 0, {**tiny, 'model_type': 'qwen2', 'mlp_bias': True, 'attention_bias': True})
    cfg('config_llama', 'tiny_llama3_rope.json', 0, {**tiny, 'rope_theta': 500000.0, 'rope_scaling': {
        'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
        'original_max_position_embeddings': 16}})
    cfg('config_llama', 'tiny_gguf_llama.json', gguf, {'metadata': {
        'general.architecture': 'llama', 'llama.block_count': 1, 'llama.embedding_length': 16,
        'llama.feed_forward_length': 32, 'llama.attention.head_count': 2, 'llama.attention.head_count_kv': 1,
        'tokenizer.ggml.tokens': {'strings': 32}}, 'tensors': {}})
    tiny_g = {'model_type': 'gemma3_text', 'hidden_size': 16, 'intermediate_size': 32, 'num_hidden_layers': 3,
              'num_attention_heads': 2, 'num_key_value_heads': 1, 'head_dim': 8, 'query_pre_attn_scalar': 8,
              'vocab_size': 32, 'sliding_window': 4, 'sliding_window_pattern': 2, 'max_position_embeddings': 64}
    llava_seeds(cfg)
    cfg('config_gemma3', 'tiny_gemma3.json', 0, tiny_g)
    cfg('config_gemma3', 'tiny_gemma3_layer_types.json', 1 << 1, {
        **tiny_g, 'layer_types': ['sliding_attention', 'full_attention', 'sliding_attention'],
        'final_logit_softcapping': 30.0, 'rope_scaling': {'rope_type': 'linear', 'factor': 2.0}})
    cfg('config_gemma3', 'tiny_gguf_gemma3.json', gguf, {'metadata': {
        'general.architecture': 'gemma3', 'gemma3.block_count': 2, 'gemma3.embedding_length': 16,
        'gemma3.feed_forward_length': 32, 'gemma3.attention.head_count': 2, 'gemma3.attention.head_count_kv': 1,
        'gemma3.attention.key_length': 8, 'gemma3.attention.sliding_window': 4,
        'tokenizer.ggml.tokens': {'strings': 32}}, 'tensors': {}})
    gm = json.load(open('models/gemma3-270m/f32/config.json'))
    cfg('config_gemma3', 'gemma3_270m.json', 0, gm)
    cfg('config_gemma3', 'gemma3_layer_types.json', 1 << 1, {
        **gm, 'layer_types': ['sliding_attention', 'full_attention', 'bogus'], 'sliding_window': 0,
        'final_logit_softcapping': 0.0})
    cfg('config_gemma3', 'gemma3_vlm.json', 0, {
        'model_type': 'gemma3', 'text_config': {**gm, 'model_type': 'gemma3_text'},
        'vision_config': {'model_type': 'siglip_vision_model', 'hidden_size': 32, 'intermediate_size': 64,
                          'num_hidden_layers': 2, 'num_attention_heads': 4, 'image_size': 28, 'patch_size': 14,
                          'layer_norm_eps': 1e-6},
        'mm_tokens_per_image': 4, 'image_token_index': 262144})
    cfg('config_gemma3', 'gguf_gemma3.json', gguf, {'metadata': {
        'general.architecture': 'gemma3', 'gemma3.block_count': 2, 'gemma3.embedding_length': 64,
        'gemma3.feed_forward_length': 128, 'gemma3.attention.head_count': 4, 'gemma3.attention.head_count_kv': 1,
        'gemma3.attention.key_length': 16, 'gemma3.attention.sliding_window': 8,
        'tokenizer.ggml.tokens': {'strings': 100}}, 'tensors': {}})


def gguf_file(metadata, tensors, alignment=32, version=3):
    """A GGUF file: metadata as (key, type, payload bytes), tensors as (name, dims innermost
    first, ggml type, data bytes), data aligned as the header says."""
    def s(x):
        x = x.encode()
        return struct.pack('<Q', len(x)) + x
    out = b'GGUF' + struct.pack('<IQQ', version, len(tensors), len(metadata))
    for key, ty, payload in metadata:
        out += s(key) + struct.pack('<I', ty) + payload
    offset, infos, data = 0, b'', b''
    for name, dims, ty, raw in tensors:
        infos += s(name) + struct.pack('<I', len(dims)) + b''.join(struct.pack('<Q', d) for d in dims)
        infos += struct.pack('<IQ', ty, offset)
        padded = raw + b'\0' * (-len(raw) % alignment)
        data += padded
        offset += len(padded)
    out += infos
    out += b'\0' * (-len(out) % alignment)
    return out + data


def gguf():
    def gstr(x):
        x = x.encode()
        return struct.pack('<Q', len(x)) + x
    u32 = lambda v: (4, struct.pack('<I', v))
    f32 = lambda v: (6, struct.pack('<f', v))
    string = lambda v: (8, gstr(v))
    strings = lambda vs: (9, struct.pack('<IQ', 8, len(vs)) + b''.join(gstr(v) for v in vs))
    i32s = lambda vs: (9, struct.pack('<IQ', 5, len(vs)) + b''.join(struct.pack('<i', v) for v in vs))
    meta = [('general.architecture',) + string('llama'), ('llama.block_count',) + u32(1),
            ('llama.attention.layer_norm_rms_epsilon',) + f32(1e-5),
            ('tokenizer.ggml.tokens',) + strings(['<s>', '</s>', 'a', 'b']),
            ('tokenizer.ggml.token_type',) + i32s([3, 3, 1, 1])]
    f32_data = struct.pack('<8f', *range(8))
    q8_block = struct.pack('<e', 0.5) + bytes(range(32))  # Q8_0: an f16 scale, 32 int8
    q4_1_block = struct.pack('<ee', 0.25, -1.0) + bytes(range(16))  # Q4_1: scale, min, 16 bytes
    tensors = [('token_embd.weight', [4, 2], 0, f32_data), ('blk.0.attn_q.weight', [32, 2], 8, q8_block * 2),
               ('blk.0.ffn_up.weight', [32], 3, q4_1_block), ('output_norm.weight', [4], 1, struct.pack('<4e', 1, 2, 3, 4))]
    w('gguf_header', 'small_v3.gguf', gguf_file(meta, tensors))
    w('gguf_header', 'small_v2_align64.gguf', gguf_file(meta + [('general.alignment',) + u32(64)], tensors[:2], 64, 2))
    w('gguf_header', 'metadata_only.gguf', gguf_file(meta, []))
    w('gguf_header', 'bad_count.gguf', b'GGUF' + struct.pack('<IQQ', 3, 1 << 62, 0))
    # The start of the real files: metadata parsing of real headers (truncated, so rejected).
    for path, name in [('models/smollm2-135m-instruct/gguf/SmolLM2-135M-Instruct.Q4_1.gguf', 'smollm2_prefix.gguf'),
                       ('models/gemma3-270m/gguf/gemma-3-270m-q4_k_m.gguf', 'gemma3_prefix.gguf')]:
        if os.path.exists(path):
            with open(path, 'rb') as f:
                w('gguf_header', name, f.read(2048))


def safetensors_file(tensors, metadata=None):
    """A safetensors file: tensors as (name, dtype, shape, data bytes)."""
    header, data = {}, b''
    if metadata:
        header['__metadata__'] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {'dtype': dtype, 'shape': shape, 'data_offsets': [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    text += b' ' * (-len(text) % 8)
    return struct.pack('<Q', len(text)) + text + data


def safetensors():
    f32 = struct.pack('<6f', *range(6))
    w('safetensors_header', 'small.safetensors', safetensors_file(
        [('model.embed_tokens.weight', 'F32', [3, 2], f32), ('model.norm.weight', 'BF16', [2], b'\x80\x3f\x00\x40'),
         ('model.layers.0.mlp.down_proj.scales', 'F16', [1, 1], b'\x00\x3c'), ('q', 'U32', [1], b'\1\2\3\4')],
        {'format': 'mlx'}))
    w('safetensors_header', 'scalar_and_empty.safetensors', safetensors_file(
        [('scalar', 'F32', [], struct.pack('<f', 1.0)), ('empty', 'I64', [0, 3], b''), ('flag', 'BOOL', [2], b'\1\0')]))
    w('safetensors_header', 'huge_dim.safetensors', safetensors_file([('x', 'U8', [2 ** 32 + 1], b'\0')]))
    w('safetensors_index', 'sharded.json', json.dumps({'metadata': {'total_size': 1234}, 'weight_map': {
        'model.embed_tokens.weight': 'model-00001-of-00002.safetensors',
        'model.norm.weight': 'model-00002-of-00002.safetensors', 'lm_head.weight': 'model-00002-of-00002.safetensors'}}))
    w('safetensors_index', 'escapes.json', json.dumps({'weight_map': {
        'a': '../other/model.safetensors', 'b': '/etc/model.safetensors', 'c': 'sub/model.safetensors', 'd': 'x.bin'}}))
    w('safetensors_index', 'empty.json', '{"weight_map": {}}')


if __name__ == '__main__':
    registry()
    chat_template()
    detokenizer_stop()
    configs()
    gguf()
    safetensors()
