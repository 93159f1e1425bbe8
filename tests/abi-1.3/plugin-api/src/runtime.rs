//! MLX runtime controls: memory counters and limits, devices, streams.

use crate::array::{check, ops};
use crate::error::{Error, Result};
use crate::ops_table::{MemoryCounter, DEVICE_CPU, DEVICE_GPU};

/// Bytes currently held by live arrays.
pub fn active_memory() -> usize {
    // SAFETY: plain value call.
    unsafe { (ops().memory)(MemoryCounter::Active as u32) }
}

/// Highest active memory since start or the last [`reset_peak_memory`].
pub fn peak_memory() -> usize {
    // SAFETY: plain value call.
    unsafe { (ops().memory)(MemoryCounter::Peak as u32) }
}

/// Bytes kept by MLX's buffer cache for reuse.
pub fn cache_memory() -> usize {
    // SAFETY: plain value call.
    unsafe { (ops().memory)(MemoryCounter::Cache as u32) }
}

pub fn reset_peak_memory() {
    // SAFETY: no arguments.
    unsafe { (ops().reset_peak_memory)() }
}

/// Returns cached buffers to the system.
pub fn clear_cache() {
    // SAFETY: no arguments.
    unsafe { (ops().clear_cache)() }
}

/// Sets the memory limit and returns the previous one.
pub fn set_memory_limit(bytes: usize) -> usize {
    // SAFETY: plain value call.
    unsafe { (ops().set_memory_limit)(bytes) }
}

/// Sets the buffer-cache limit and returns the previous one.
pub fn set_cache_limit(bytes: usize) -> usize {
    // SAFETY: plain value call.
    unsafe { (ops().set_cache_limit)(bytes) }
}

/// A compute device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Cpu,
    Gpu,
}

impl Device {
    fn code(self) -> u32 {
        match self {
            Device::Cpu => DEVICE_CPU,
            Device::Gpu => DEVICE_GPU,
        }
    }

    /// Whether this MLX build can run on the device.
    pub fn is_available(self) -> bool {
        // SAFETY: plain value call.
        unsafe { (ops().device_available)(self.code()) }
    }

    /// Makes the device the default for new operations.
    pub fn set_default(self) -> Result<()> {
        if !self.is_available() {
            let why = match self {
                Device::Gpu => {
                    "the GPU is not available: this MLX build has no GPU backend (install the mlx-cuda wheel on a \
                                CUDA machine) or no GPU was found; use the CPU (`--device cpu`)"
                }
                Device::Cpu => "the CPU is not available in this MLX build",
            };
            return Err(Error::Mlx(why.into()));
        }
        // SAFETY: plain value call.
        check(unsafe { (ops().set_default_device)(self.code()) })
    }

    pub fn default_device() -> Device {
        // SAFETY: plain value call.
        if unsafe { (ops().default_device)() } == DEVICE_GPU {
            Device::Gpu
        } else {
            Device::Cpu
        }
    }
}

/// An MLX stream (an ordered queue of work on one device).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stream {
    pub device: Device,
    pub index: i32,
}

impl Stream {
    pub fn new(device: Device) -> Result<Stream> {
        let mut index = 0;
        // SAFETY: one out-slot.
        check(unsafe { (ops().new_stream)(device.code(), &mut index) })?;
        Ok(Stream { device, index })
    }

    /// This thread's default stream on `device`.
    pub fn default_for(device: Device) -> Result<Stream> {
        let mut index = 0;
        // SAFETY: one out-slot.
        check(unsafe { (ops().default_stream)(device.code(), &mut index) })?;
        Ok(Stream { device, index })
    }

    /// Makes this stream the current thread's default for its device.
    pub fn set_default(self) -> Result<()> {
        // SAFETY: plain value call.
        check(unsafe { (ops().set_default_stream)(self.device.code(), self.index) })
    }

    /// Waits until all work queued on this stream has finished.
    pub fn synchronize(self) -> Result<()> {
        // SAFETY: plain value call.
        check(unsafe { (ops().synchronize)(self.device.code(), self.index) })
    }
}

/// Waits for all work on this thread's default stream of the default device.
pub fn synchronize() -> Result<()> {
    // SAFETY: plain value call.
    check(unsafe { (ops().synchronize)((ops().default_device)(), -1) })
}
