//! A GGUF header reader that checks everything MLX's GGUF loader (antirez's gguflib) would
//! trust: counts, string and array lengths, value types, tensor dimensions, tensor types and
//! where each tensor's data lies. gguflib reads lengths and offsets from the file and follows
//! them, so a truncated or hostile file crashes the process inside it; this runs first, on the
//! mapped file, and turns every such file into an error that says what is wrong and where.
//!
//! Format (v2 and v3; v1 used 32-bit counts and is refused): magic `GGUF`, u32 version, u64
//! tensor count, u64 metadata count, the metadata entries (u64-length key, u32 value type,
//! value), the tensor infos (name, u32 n_dims, u64 dims innermost first, u32 type, u64 offset),
//! padding to `general.alignment` (default 32), then the tensor data.

/// What a valid header describes.
#[derive(Clone, Debug)]
pub struct GgufHeader {
    pub version: u32,
    pub alignment: u64,
    /// Where the tensor data section starts in the file.
    pub data_start: u64,
    pub metadata_keys: Vec<String>,
    pub tensors: Vec<TensorInfo>,
}

#[derive(Clone, Debug)]
pub struct TensorInfo {
    pub name: String,
    /// GGML order: innermost dimension first.
    pub dims: Vec<u64>,
    pub type_id: u32,
    /// Relative to `data_start`.
    pub offset: u64,
    pub nbytes: u64,
}

/// The tensor types MLX's loader reads: (id, name, elements per block, bytes per block).
/// F32/F16 are copied; Q4_0/Q4_1/Q8_0 become affine-quantized triples.
const LOADABLE: [(u32, &str, u64, u64); 5] =
    [(0, "F32", 1, 4), (1, "F16", 1, 2), (2, "Q4_0", 32, 18), (3, "Q4_1", 32, 20), (8, "Q8_0", 32, 34)];

/// Names of the GGML tensor types MLX cannot read, for the message. (gguflib numbers its
/// integer types differently from llama.cpp, so I8/I16/I32 files are refused as well.)
fn type_name(id: u32) -> Option<&'static str> {
    const NAMES: [&str; 42] = [
        "F32", "F16", "Q4_0", "Q4_1", "", "", "Q5_0", "Q5_1", "Q8_0", "Q8_1", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
        "Q8_K", "IQ2_XXS", "IQ2_XS", "IQ3_XXS", "IQ1_S", "IQ4_NL", "IQ3_S", "IQ2_S", "IQ4_XS", "I8", "I16", "I32",
        "I64", "F64", "IQ1_M", "BF16", "", "", "", "TQ1_0", "TQ2_0", "", "", "", "MXFP4", "", "",
    ];
    NAMES.get(id as usize).copied().filter(|n| !n.is_empty())
}

/// GGML allows at most 4 dimensions; MLX shapes are 32-bit per dimension.
const MAX_DIMS: u32 = 4;
/// Nested arrays are legal GGUF but no model uses them, and gguflib does not walk them safely.
const MAX_VALUE_TYPE: u32 = 12;

struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], String> {
        let left = (self.bytes.len() - self.pos) as u64;
        if n > left {
            return Err(format!(
                "truncated: {what} at byte {} needs {n} bytes, but the file has {left} left (of {})",
                self.pos,
                self.bytes.len()
            ));
        }
        let s = &self.bytes[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn u32(&mut self, what: &str) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.take(4, what)?.try_into().expect("4 bytes")))
    }

    fn u64(&mut self, what: &str) -> Result<u64, String> {
        Ok(u64::from_le_bytes(self.take(8, what)?.try_into().expect("8 bytes")))
    }

    fn string(&mut self, what: &str) -> Result<&'a [u8], String> {
        let n = self.u64(what)?;
        self.take(n, what)
    }

    fn utf8(&mut self, what: &str) -> Result<String, String> {
        let at = self.pos;
        let s = self.string(what)?;
        String::from_utf8(s.to_vec()).map_err(|_| format!("{what} at byte {at} is not valid UTF-8"))
    }

    /// Skips one metadata value of type `ty`, returning it when it is a u32 (for
    /// `general.alignment`).
    fn value(&mut self, ty: u32, key: &str) -> Result<Option<u32>, String> {
        let what = format!("the value of `{key}`");
        match ty {
            0 | 1 | 7 => self.take(1, &what).map(|_| None),
            2 | 3 => self.take(2, &what).map(|_| None),
            4 => self.u32(&what).map(Some),
            5 | 6 => self.take(4, &what).map(|_| None),
            10..=12 => self.take(8, &what).map(|_| None),
            8 => self.string(&what).map(|_| None),
            9 => {
                let elem = self.u32(&what)?;
                let n = self.u64(&what)?;
                match elem {
                    8 => {
                        for _ in 0..n {
                            self.string(&what)?;
                        }
                    }
                    9 => return Err(format!("`{key}` is an array of arrays, which is not supported")),
                    e if e <= MAX_VALUE_TYPE => {
                        let size = match e {
                            0 | 1 | 7 => 1,
                            2 | 3 => 2,
                            4..=6 => 4,
                            _ => 8,
                        };
                        self.take(n.saturating_mul(size), &what)?;
                    }
                    e => return Err(format!("`{key}` is an array of unknown value type {e}")),
                }
                Ok(None)
            }
            t => Err(format!("metadata `{key}` has unknown value type {t} (expected 0 to {MAX_VALUE_TYPE})")),
        }
    }
}

/// Checks a whole GGUF file (`bytes` is the file, usually memory-mapped) and describes it.
/// The error says what is wrong and where (byte position, key or tensor name).
pub fn parse(bytes: &[u8]) -> Result<GgufHeader, String> {
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4, "the magic")? != b"GGUF" {
        return Err("not a GGUF file (it does not start with `GGUF`)".into());
    }
    let version = r.u32("the version")?;
    if !(2..=3).contains(&version) {
        return Err(format!("GGUF version {version} is not supported (versions 2 and 3 are)"));
    }
    let tensor_count = r.u64("the tensor count")?;
    let kv_count = r.u64("the metadata count")?;
    // Each entry takes at least 12 bytes (an empty key, a type, a 1-byte value) and each tensor
    // info at least 28: counts beyond what the file could hold are corrupt, not just large.
    let left = (bytes.len() - r.pos) as u64;
    if kv_count > left / 13 {
        return Err(format!("the metadata count {kv_count} is more than a file of {} bytes can hold", bytes.len()));
    }
    if tensor_count > left / 28 {
        return Err(format!("the tensor count {tensor_count} is more than a file of {} bytes can hold", bytes.len()));
    }
    let mut alignment = 32u64;
    let mut metadata_keys = Vec::with_capacity(kv_count as usize);
    for i in 0..kv_count {
        let key = r.utf8(&format!("metadata key {i}"))?;
        let ty = r.u32(&format!("the type of `{key}`"))?;
        let value = r.value(ty, &key)?;
        if key == "general.alignment" {
            alignment = match value {
                Some(a) if a > 0 && a.is_power_of_two() => u64::from(a),
                Some(a) => return Err(format!("`general.alignment` is {a}; it must be a power of two")),
                None => return Err(format!("`general.alignment` has value type {ty}; expected 4 (u32)")),
            };
        }
        if metadata_keys.contains(&key) {
            return Err(format!("metadata key `{key}` appears twice"));
        }
        metadata_keys.push(key);
    }
    let mut tensors: Vec<TensorInfo> = Vec::with_capacity(tensor_count as usize);
    for i in 0..tensor_count {
        let name = r.utf8(&format!("the name of tensor {i}"))?;
        let n_dims = r.u32(&format!("the dimension count of tensor `{name}`"))?;
        if !(1..=MAX_DIMS).contains(&n_dims) {
            return Err(format!("tensor `{name}` has {n_dims} dimensions (expected 1 to {MAX_DIMS})"));
        }
        let mut dims = Vec::with_capacity(n_dims as usize);
        for _ in 0..n_dims {
            dims.push(r.u64(&format!("the dimensions of tensor `{name}`"))?);
        }
        if let Some(d) = dims.iter().find(|&&d| d == 0 || d > i32::MAX as u64) {
            return Err(format!("tensor `{name}` has a dimension of {d} (dimensions {dims:?})"));
        }
        let type_id = r.u32(&format!("the type of tensor `{name}`"))?;
        let offset = r.u64(&format!("the offset of tensor `{name}`"))?;
        let Some(&(_, tname, block, block_bytes)) = LOADABLE.iter().find(|t| t.0 == type_id) else {
            return Err(match type_name(type_id) {
                Some(t) => format!(
                    "tensor `{name}` has type {t}, which MLX's GGUF reader cannot load (it reads F32, F16, Q4_0, \
                     Q4_1 and Q8_0); convert the model to safetensors first (see scripts/models/)"
                ),
                None => format!("tensor `{name}` has unknown type id {type_id}"),
            });
        };
        if dims[0] % block != 0 {
            return Err(format!(
                "tensor `{name}` ({tname}) has an innermost dimension of {} that is not a multiple of its block of {block}",
                dims[0]
            ));
        }
        let elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let nbytes = elements
            .and_then(|e| (e / block).checked_mul(block_bytes))
            .ok_or_else(|| format!("tensor `{name}` has dimensions {dims:?} whose size overflows"))?;
        if offset % alignment != 0 {
            return Err(format!(
                "tensor `{name}` has offset {offset}, which is not a multiple of the alignment {alignment}"
            ));
        }
        if tensors.iter().any(|t| t.name == name) {
            return Err(format!("tensor `{name}` appears twice"));
        }
        tensors.push(TensorInfo { name, dims, type_id, offset, nbytes });
    }
    let data_start = (r.pos as u64).next_multiple_of(alignment);
    let file = bytes.len() as u64;
    let mut spans: Vec<(u64, u64, &str)> = Vec::with_capacity(tensors.len());
    for t in &tensors {
        let end = data_start.checked_add(t.offset).and_then(|s| s.checked_add(t.nbytes));
        match end {
            Some(end) if end <= file => spans.push((t.offset, t.offset + t.nbytes, &t.name)),
            _ => {
                return Err(format!(
                    "tensor `{}` ({} bytes at offset {} of the data section, which starts at byte {data_start}) \
                     ends past the end of the file ({file} bytes): the file is truncated or corrupt",
                    t.name, t.nbytes, t.offset
                ))
            }
        }
    }
    spans.sort_unstable();
    if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
        return Err(format!("the data of tensors `{}` and `{}` overlap", w[0].2, w[1].2));
    }
    Ok(GgufHeader { version, alignment, data_start, metadata_keys, tensors })
}

impl GgufHeader {
    /// The tensor types by how many elements each stores, most first: `Q4_1 (also Q8_0, F32)`.
    pub fn storage(&self) -> String {
        let mut by_type: Vec<(u64, &str)> = Vec::new();
        for t in &self.tensors {
            let n: u64 = t.dims.iter().product();
            let name = type_name(t.type_id).unwrap_or("?");
            match by_type.iter_mut().find(|(_, k)| *k == name) {
                Some((total, _)) => *total += n,
                None => by_type.push((n, name)),
            }
        }
        by_type.sort_by(|a, b| b.cmp(a));
        let mut names = by_type.iter().map(|(_, k)| *k);
        let first = names.next().unwrap_or("no tensors").to_string();
        let rest: Vec<&str> = names.collect();
        if rest.is_empty() {
            first
        } else {
            format!("{first} (also {})", rest.join(", "))
        }
    }
}

/// Maps `path` and checks it with [`parse`].
pub fn check_file(path: &std::path::Path) -> crate::Result<GgufHeader> {
    let err = |reason: String| crate::Error::Model { path: path.to_path_buf(), reason };
    let file = std::fs::File::open(path).map_err(|e| crate::Error::Io { path: path.to_path_buf(), source: e })?;
    // SAFETY: the map is read-only and dropped before MLX opens the file; a file truncated
    // underneath it by another process is the one hazard, as for every reader of mapped files.
    let map =
        unsafe { memmap2::Mmap::map(&file) }.map_err(|e| crate::Error::Io { path: path.to_path_buf(), source: e })?;
    parse(&map).map_err(err)
}
