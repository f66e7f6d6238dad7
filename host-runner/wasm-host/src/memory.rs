//! Reading and writing guest memory from hostcalls. Every access is bounds-checked: a wild
//! pointer gets `INVALID_MEMORY_ACCESS` (or `EFAULT` for WASI), never a host panic.

use wasmtime::{Caller, Memory, TypedFunc};

use crate::abi::Status;
use crate::host_state::HostState;

/// How a hostcall ends: a status for the guest, or a trap that aborts the callback (only when
/// the guest's own allocator trapped or the VM was interrupted inside it).
#[derive(Debug)]
pub enum Fail {
    Status(Status),
    Trap(wasmtime::Error),
}

impl From<Status> for Fail {
    fn from(s: Status) -> Fail {
        Fail::Status(s)
    }
}

pub type Hc<T = ()> = Result<T, Fail>;

/// Turns a hostcall result into the i32 the guest receives.
pub fn finish(result: Hc) -> wasmtime::Result<i32> {
    match result {
        Ok(()) => Ok(Status::Ok as i32),
        Err(Fail::Status(s)) => Ok(s as i32),
        Err(Fail::Trap(e)) => Err(e),
    }
}

/// The guest's memory and allocator, found once at instantiation.
#[derive(Clone)]
pub struct GuestExports {
    pub memory: Memory,
    pub alloc: Option<TypedFunc<u32, u32>>,
}

fn exports(caller: &Caller<'_, HostState>) -> Hc<GuestExports> {
    caller.data().exports.clone().ok_or(Fail::Status(Status::InternalFailure))
}

fn range(ptr: u32, len: u32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= size).then_some(start..end)
}

/// Copies `len` bytes at `ptr` out of the guest. `(0, 0)` is a valid empty slice.
pub fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Hc<Vec<u8>> {
    let memory = exports(caller)?.memory;
    let data = memory.data(caller);
    let r = range(ptr, len, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    Ok(data[r].to_vec())
}

/// Like [`read`], but for UTF-8-agnostic keys and names.
pub fn read_string(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Hc<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Hc {
    let memory = exports(caller)?.memory;
    let data = memory.data_mut(caller);
    let r = range(ptr, bytes.len() as u32, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    data[r].copy_from_slice(bytes);
    Ok(())
}

pub fn write_u32(caller: &mut Caller<'_, HostState>, ptr: u32, value: u32) -> Hc {
    write(caller, ptr, &value.to_le_bytes())
}

pub fn write_u64(caller: &mut Caller<'_, HostState>, ptr: u32, value: u64) -> Hc {
    write(caller, ptr, &value.to_le_bytes())
}

/// Calls the guest allocator for `len` bytes; a zero or out-of-bounds answer is
/// `INVALID_MEMORY_ACCESS`, a trap inside the allocator aborts the callback.
pub fn allocate(caller: &mut Caller<'_, HostState>, len: u32) -> Hc<u32> {
    let ex = exports(caller)?;
    let alloc = ex.alloc.ok_or(Status::InvalidMemoryAccess)?;
    let ptr = alloc.call(&mut *caller, len).map_err(Fail::Trap)?;
    let size = ex.memory.data_size(&*caller);
    if ptr == 0 || range(ptr, len, size).is_none() {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(ptr)
}

/// Copies `bytes` into fresh guest memory and writes its pointer and length to `ptr_ptr` and
/// `len_ptr`. Empty data is written as (0, 0) without calling the allocator, as Envoy does.
pub fn copy_out(caller: &mut Caller<'_, HostState>, bytes: &[u8], ptr_ptr: u32, len_ptr: u32) -> Hc {
    if bytes.is_empty() {
        write_u32(caller, ptr_ptr, 0)?;
        return write_u32(caller, len_ptr, 0);
    }
    let len = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let ptr = allocate(caller, len)?;
    write(caller, ptr, bytes)?;
    write_u32(caller, ptr_ptr, ptr)?;
    write_u32(caller, len_ptr, len)
}
