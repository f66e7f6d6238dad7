//! Reading and writing guest memory from hostcalls. Every access is bounds-checked: a wild
//! pointer gets `INVALID_MEMORY_ACCESS` (or `EFAULT` for WASI), never a host panic.

use wasmtime::{Caller, Memory};

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

fn memory(caller: &Caller<'_, HostState>) -> Hc<Memory> {
    caller.data().memory.ok_or(Fail::Status(Status::InternalFailure))
}

fn range(ptr: u32, len: u32, size: usize) -> Option<std::ops::Range<usize>> {
    let start = ptr as usize;
    let end = start.checked_add(len as usize)?;
    (end <= size).then_some(start..end)
}

/// Copies `len` bytes at `ptr` out of the guest. `(0, 0)` is a valid empty slice.
pub fn read(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Hc<Vec<u8>> {
    let data = memory(caller)?.data(caller);
    let r = range(ptr, len, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    Ok(data[r].to_vec())
}

/// Runs `f` on the guest bytes at `ptr` and the host state, without copying the bytes.
pub fn with_bytes<R>(
    caller: &mut Caller<'_, HostState>,
    ptr: u32,
    len: u32,
    f: impl FnOnce(&[u8], &mut HostState) -> R,
) -> Hc<R> {
    let (data, state) = memory(caller)?.data_and_store_mut(caller);
    let r = range(ptr, len, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    Ok(f(&data[r], state))
}

/// Like [`with_bytes`] for two ranges (a key and a value).
pub fn with_two<R>(
    caller: &mut Caller<'_, HostState>,
    (p1, l1): (u32, u32),
    (p2, l2): (u32, u32),
    f: impl FnOnce(&[u8], &[u8], &mut HostState) -> R,
) -> Hc<R> {
    let (data, state) = memory(caller)?.data_and_store_mut(caller);
    let r1 = range(p1, l1, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    let r2 = range(p2, l2, data.len()).ok_or(Status::InvalidMemoryAccess)?;
    Ok(f(&data[r1], &data[r2], state))
}

/// Like [`read`], but for UTF-8-agnostic keys and names.
pub fn read_string(caller: &Caller<'_, HostState>, ptr: u32, len: u32) -> Hc<String> {
    Ok(String::from_utf8_lossy(&read(caller, ptr, len)?).into_owned())
}

pub fn write(caller: &mut Caller<'_, HostState>, ptr: u32, bytes: &[u8]) -> Hc {
    let data = memory(caller)?.data_mut(caller);
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
    // The allocator is moved out for the call (no clone on this hot path). A hostcall made from
    // inside the allocator that needs to allocate again finds none and gets a status.
    let alloc = caller.data_mut().alloc.take().ok_or(Status::InvalidMemoryAccess)?;
    let result = alloc.call(&mut *caller, len);
    caller.data_mut().alloc = Some(alloc);
    let ptr = result.map_err(Fail::Trap)?;
    let size = memory(caller)?.data_size(&*caller);
    if ptr == 0 || range(ptr, len, size).is_none() {
        return Err(Status::InvalidMemoryAccess.into());
    }
    Ok(ptr)
}

/// Copies `bytes` into fresh guest memory and writes its pointer and length to `ptr_ptr` and
/// `len_ptr`. Empty data is written as (0, 0) without calling the allocator, as Envoy does.
pub fn copy_out(caller: &mut Caller<'_, HostState>, bytes: &[u8], ptr_ptr: u32, len_ptr: u32) -> Hc {
    let len = u32::try_from(bytes.len()).map_err(|_| Status::InvalidMemoryAccess)?;
    let ptr = if bytes.is_empty() { 0 } else { allocate(caller, len)? };
    let data = memory(caller)?.data_mut(caller);
    let size = data.len();
    let (value, at_ptr, at_len) = (range(ptr, len, size), range(ptr_ptr, 4, size), range(len_ptr, 4, size));
    let (Some(value), Some(at_ptr), Some(at_len)) = (value, at_ptr, at_len) else {
        return Err(Status::InvalidMemoryAccess.into());
    };
    data[value].copy_from_slice(bytes);
    data[at_ptr].copy_from_slice(&ptr.to_le_bytes());
    data[at_len].copy_from_slice(&len.to_le_bytes());
    Ok(())
}
