//! Per-minor layouts of the boundary structs: how many bytes each minor's version of a table
//! has, and the layout fingerprint of each minor.
//!
//! Every boundary struct lists its fields once, grouped by the minor that added them
//! ([`abi_layout!`](crate::abi_layout)). From that list come, at compile time:
//! - `size_at_minor(m)`: the size a writer built for minor `m` puts in the table's `size`, so a
//!   reader can refuse a table too small for the minor its writer declares;
//! - [`has_entry!`](crate::has_entry)`(size, T, field)`: whether a table of that size has an entry;
//! - `layout_hash(h, m)`: the offsets of the fields of minors `<= m`, folded into the
//!   fingerprint of minor `m` ([`layout_fingerprint`]).
//!
//! Two compile-time checks keep the lists honest: the latest minor's size equals `size_of` (a
//! field appended to a struct but not to its list fails the build), and every minor's first
//! field starts at or after the previous minor's size (so no entry ever lives in what an older
//! writer left as tail padding).

/// One FNV-1a step over the eight bytes of `v`.
pub const fn fnv(mut h: u64, v: u64) -> u64 {
    let mut i = 0;
    while i < 8 {
        h ^= (v >> (i * 8)) & 0xff;
        h = h.wrapping_mul(0x100000001b3);
        i += 1;
    }
    h
}

/// The size of the pointee of `p` (lets a macro name a field's type without spelling it).
pub const fn size_of_pointee<F>(_: *const F) -> usize {
    std::mem::size_of::<F>()
}

/// Whether a field added in `field_minor` is part of minor `minor`'s layout (a function rather
/// than `<=` in the macro, where `0 <= minor` would trip the useless-comparison lint).
pub const fn in_minor(field_minor: u32, minor: u32) -> bool {
    field_minor <= minor
}

/// Rounds `n` up to a multiple of `align` (a power of two).
pub const fn round_up(n: usize, align: usize) -> usize {
    (n + align - 1) & !(align - 1)
}

/// The byte just past field `$f` of `$t`.
#[doc(hidden)]
#[macro_export]
macro_rules! field_end {
    ($t:ty, $f:ident) => {{
        let u = ::std::mem::MaybeUninit::<$t>::uninit();
        let p = u.as_ptr();
        // SAFETY: `addr_of!` computes the field's address inside the (uninitialised) local
        // without reading it.
        ::std::mem::offset_of!($t, $f) + $crate::layout::size_of_pointee(unsafe { ::std::ptr::addr_of!((*p).$f) })
    }};
}

/// Whether a table of `size` bytes (its `size` field) contains entry `$f` of `$t`.
#[macro_export]
macro_rules! has_entry {
    ($size:expr, $t:ty, $f:ident) => {
        $size >= $crate::field_end!($t, $f)
    };
}

/// Declares the per-minor layout of a `#[repr(C)]` boundary struct:
/// `abi_layout!(Foo { 0 => [a, b], 1 => [c] });` lists every field, grouped by the minor that
/// added it, in declaration order.
#[doc(hidden)]
#[macro_export]
macro_rules! abi_layout {
    ($t:ty { $($minor:literal => [$($f:ident),* $(,)?]),+ $(,)? }) => {
        impl $t {
            /// The size of this table as written by a side built for ABI minor `minor`
            /// (0 when the struct did not exist yet).
            pub const fn size_at_minor(minor: u32) -> usize {
                let mut end = 0usize;
                $($( if $crate::layout::in_minor($minor, minor) { let e = $crate::field_end!($t, $f); if e > end { end = e; } } )*)+
                $crate::layout::round_up(end, ::std::mem::align_of::<$t>())
            }

            /// Folds the offsets of the fields of minors `<= minor` into `h`.
            pub const fn layout_hash(h: u64, minor: u32) -> u64 {
                let first: u32 = { let m = [$($minor),+]; m[0] };
                if minor < first {
                    return h;
                }
                let mut h = $crate::layout::fnv(h, ::std::mem::align_of::<$t>() as u64);
                $($( if $crate::layout::in_minor($minor, minor) { h = $crate::layout::fnv(h, ::std::mem::offset_of!($t, $f) as u64); } )*)+
                h
            }
        }

        const _: () = {
            assert!(
                <$t>::size_at_minor($crate::abi::ABI_MINOR) == ::std::mem::size_of::<$t>(),
                concat!("abi_layout!: a field of ", stringify!($t), " is missing from its list")
            );
            $( $crate::abi_layout!(@first_after $t, $minor, [$($f),*]); )+
        };
    };
    (@first_after $t:ty, $minor:literal, []) => {};
    (@first_after $t:ty, $minor:literal, [$first:ident $(, $rest:ident)*]) => {
        assert!(
            $minor == 0 || ::std::mem::offset_of!($t, $first) >= <$t>::size_at_minor($minor - 1),
            concat!("abi_layout!: ", stringify!($t), "'s first field of a minor lies in the tail padding of the one before")
        );
    };
}
