//! Element types, with codes that are part of the ABI (append only).

use crate::{Error, Result};

/// An MLX element type. The discriminant is the code that crosses the ops table.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    Bool = 0,
    U8 = 1,
    U16 = 2,
    U32 = 3,
    U64 = 4,
    I8 = 5,
    I16 = 6,
    I32 = 7,
    I64 = 8,
    F16 = 9,
    F32 = 10,
    BF16 = 11,
    F64 = 12,
    Complex64 = 13,
}

impl Dtype {
    pub const ALL: [Dtype; 14] = [
        Dtype::Bool,
        Dtype::U8,
        Dtype::U16,
        Dtype::U32,
        Dtype::U64,
        Dtype::I8,
        Dtype::I16,
        Dtype::I32,
        Dtype::I64,
        Dtype::F16,
        Dtype::F32,
        Dtype::BF16,
        Dtype::F64,
        Dtype::Complex64,
    ];

    pub fn from_code(code: u32) -> Result<Dtype> {
        Dtype::ALL.get(code as usize).copied().ok_or_else(|| Error::Abi(format!("unknown dtype code {code}")))
    }

    pub fn size_in_bytes(self) -> usize {
        match self {
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 1,
            Dtype::U16 | Dtype::I16 | Dtype::F16 | Dtype::BF16 => 2,
            Dtype::U32 | Dtype::I32 | Dtype::F32 => 4,
            Dtype::U64 | Dtype::I64 | Dtype::F64 | Dtype::Complex64 => 8,
        }
    }

    pub fn is_float(self) -> bool {
        matches!(self, Dtype::F16 | Dtype::F32 | Dtype::BF16 | Dtype::F64)
    }

    /// Name as MLX and safetensors spell it (`float32`, `bfloat16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "bool",
            Dtype::U8 => "uint8",
            Dtype::U16 => "uint16",
            Dtype::U32 => "uint32",
            Dtype::U64 => "uint64",
            Dtype::I8 => "int8",
            Dtype::I16 => "int16",
            Dtype::I32 => "int32",
            Dtype::I64 => "int64",
            Dtype::F16 => "float16",
            Dtype::F32 => "float32",
            Dtype::BF16 => "bfloat16",
            Dtype::F64 => "float64",
            Dtype::Complex64 => "complex64",
        }
    }
}

impl std::fmt::Display for Dtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Rust element types that can be copied in and out of arrays.
///
/// # Safety
/// `DTYPE` must have exactly the size and bit layout of `Self`.
pub unsafe trait Element: Copy + Default + 'static {
    const DTYPE: Dtype;
}

// SAFETY: each impl pairs a Rust type with the MLX dtype of identical size and layout.
unsafe impl Element for bool {
    const DTYPE: Dtype = Dtype::Bool;
}
// SAFETY: as above.
unsafe impl Element for u8 {
    const DTYPE: Dtype = Dtype::U8;
}
// SAFETY: as above.
unsafe impl Element for u32 {
    const DTYPE: Dtype = Dtype::U32;
}
// SAFETY: as above.
unsafe impl Element for i32 {
    const DTYPE: Dtype = Dtype::I32;
}
// SAFETY: as above.
unsafe impl Element for i64 {
    const DTYPE: Dtype = Dtype::I64;
}
// SAFETY: as above.
unsafe impl Element for u64 {
    const DTYPE: Dtype = Dtype::U64;
}
// SAFETY: as above.
unsafe impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
// SAFETY: as above.
unsafe impl Element for f64 {
    const DTYPE: Dtype = Dtype::F64;
}

/// `x` rounded to the nearest bfloat16 (ties to even), as an f32: what a constant becomes
/// when a reference builds it as `mx.array(x, mx.bfloat16)`.
pub fn round_to_bf16(x: f32) -> f32 {
    if !x.is_finite() {
        return x;
    }
    let bits = x.to_bits();
    let lsb = (bits >> 16) & 1;
    f32::from_bits(bits.wrapping_add(0x7fff + lsb) & 0xffff_0000)
}
