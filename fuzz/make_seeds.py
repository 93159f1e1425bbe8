#!/usr/bin/env python3
"""Writes the committed seed corpus, fuzz/corpus/<target>/ (run from the repository root after
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


if __name__ == '__main__':
    registry()
    chat_template()
    detokenizer_stop()
    configs()
