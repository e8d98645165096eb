//! The NCCL library, opened at run time by its soname `libnccl.so.2`, the only name the
//! NCCL wheel ships (and the one libtorch_cuda itself links: in a process with CUDA
//! libtorch the library is already loaded, from the wheel next to torch, and opening it
//! again finds that copy). cudarc's loader looks for `libnccl.so`, a development symlink
//! that neither the wheel nor a runtime image has, so the handful of entry points the
//! communicator uses are resolved here instead; everything CUDA itself goes through
//! cudarc. Only the ABI of NCCL 2.x is assumed (stable since 2.0 for these calls).

use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

/// `ncclComm_t`.
pub type Comm = *mut c_void;
/// `cudaStream_t` (null: the legacy default stream).
pub type Stream = *mut c_void;

/// `ncclUniqueId`.
/// Length of an NCCL unique id (`ncclUniqueId`).
pub const ID_BYTES: usize = 128;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    pub internal: [c_char; ID_BYTES],
}

/// `ncclResult_t` values the communicator tells apart.
pub const SUCCESS: c_int = 0;
pub const IN_PROGRESS: c_int = 7;

/// `ncclRedOp_t::ncclSum`.
pub const SUM: c_int = 0;

/// `ncclDataType_t` (the values of the types tensors have).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i32)]
pub enum DataType {
    Int8 = 0,
    Uint8 = 1,
    Int32 = 2,
    Int64 = 4,
    Float16 = 6,
    Float32 = 7,
    Float64 = 8,
    Bfloat16 = 9,
}

impl DataType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DataType::Int8 | DataType::Uint8 => 1,
            DataType::Float16 | DataType::Bfloat16 => 2,
            DataType::Int32 | DataType::Float32 => 4,
            DataType::Int64 | DataType::Float64 => 8,
        }
    }
}

/// Where the library is looked for, in order: an explicit path, the soname (already
/// loaded with libtorch_cuda, else found on `LD_LIBRARY_PATH` / the binary's RUNPATH /
/// the loader cache), and the development name a system install may have.
pub const PATH_ENV: &str = "JANUS_NCCL_LIBRARY";
const NAMES: [&str; 2] = ["libnccl.so.2", "libnccl.so"];

type GetVersion = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueId = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRank = unsafe extern "C" fn(*mut Comm, c_int, UniqueId, c_int) -> c_int;
type AllReduce =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
type ReduceScatter =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
type AllGather =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, Comm, Stream) -> c_int;
type Broadcast =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, c_int, Comm, Stream) -> c_int;
type CommOp = unsafe extern "C" fn(Comm) -> c_int;
type CommGetAsyncError = unsafe extern "C" fn(Comm, *mut c_int) -> c_int;
type GetErrorString = unsafe extern "C" fn(c_int) -> *const c_char;
type GetLastError = unsafe extern "C" fn(Comm) -> *const c_char;

/// The resolved entry points (the library stays loaded for the life of the process).
pub struct Nccl {
    /// Which name or path was opened.
    pub source: String,
    pub get_version: GetVersion,
    pub get_unique_id: GetUniqueId,
    pub comm_init_rank: CommInitRank,
    pub all_reduce: AllReduce,
    pub reduce_scatter: ReduceScatter,
    pub all_gather: AllGather,
    pub broadcast: Broadcast,
    pub comm_get_async_error: CommGetAsyncError,
    pub comm_abort: CommOp,
    pub comm_destroy: CommOp,
    get_error_string: GetErrorString,
    get_last_error: GetLastError,
    _lib: libloading::Library,
}

impl Nccl {
    fn open() -> Result<Self, String> {
        let explicit = std::env::var(PATH_ENV).ok().filter(|p| !p.is_empty());
        let candidates: Vec<String> = match &explicit {
            Some(p) => vec![p.clone()],
            None => NAMES.iter().map(|s| s.to_string()).collect(),
        };
        let mut tried = Vec::new();
        for name in &candidates {
            // SAFETY: loading NCCL runs its (side-effect free) initialisers only.
            match unsafe { libloading::Library::new(name) } {
                Ok(lib) => return Self::resolve(lib, name.clone()),
                Err(e) => tried.push(format!("{name}: {e}")),
            }
        }
        Err(format!(
            "NCCL not found ({}); it comes with PyTorch's CUDA wheel (nvidia-nccl), or set {PATH_ENV}",
            tried.join("; ")
        ))
    }

    fn resolve(lib: libloading::Library, source: String) -> Result<Self, String> {
        // SAFETY: each symbol has the C signature of its NCCL 2.x declaration.
        unsafe {
            macro_rules! sym {
                ($name:literal) => {
                    *lib.get(concat!($name, "\0").as_bytes())
                        .map_err(|e| format!("{source} has no {}: {e}", $name))?
                };
            }
            Ok(Self {
                get_version: sym!("ncclGetVersion"),
                get_unique_id: sym!("ncclGetUniqueId"),
                comm_init_rank: sym!("ncclCommInitRank"),
                all_reduce: sym!("ncclAllReduce"),
                reduce_scatter: sym!("ncclReduceScatter"),
                all_gather: sym!("ncclAllGather"),
                broadcast: sym!("ncclBroadcast"),
                comm_get_async_error: sym!("ncclCommGetAsyncError"),
                comm_abort: sym!("ncclCommAbort"),
                comm_destroy: sym!("ncclCommDestroy"),
                get_error_string: sym!("ncclGetErrorString"),
                get_last_error: sym!("ncclGetLastError"),
                source,
                _lib: lib,
            })
        }
    }

    /// NCCL's own description of a result code.
    pub fn error_string(&self, code: c_int) -> String {
        // SAFETY: NCCL returns a static string for any code.
        let p = unsafe { (self.get_error_string)(code) };
        if p.is_null() {
            return format!("NCCL error {code}");
        }
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }

    /// The last error NCCL recorded for `comm` (its detailed message), if any.
    pub fn last_error(&self, comm: Comm) -> Option<String> {
        // SAFETY: `comm` is null or a live communicator; the string is NCCL's.
        let p = unsafe { (self.get_last_error)(comm) };
        if p.is_null() {
            return None;
        }
        let s = unsafe { CStr::from_ptr(p) }
            .to_string_lossy()
            .trim()
            .to_string();
        (!s.is_empty()).then_some(s)
    }

    /// `(major, minor, patch)` of the loaded library.
    pub fn version(&self) -> Result<(u32, u32, u32), String> {
        let mut v: c_int = 0;
        // SAFETY: a valid out-pointer.
        let rc = unsafe { (self.get_version)(&mut v) };
        if rc != SUCCESS {
            return Err(self.error_string(rc));
        }
        Ok(decode_version(v as u32))
    }
}

/// `ncclGetVersion`'s code: `major * 10000 + minor * 100 + patch` since 2.9, `major *
/// 1000 + minor * 100 + patch` before.
fn decode_version(code: u32) -> (u32, u32, u32) {
    if code >= 20900 {
        (code / 10000, code % 10000 / 100, code % 100)
    } else {
        (code / 1000, code % 1000 / 100, code % 100)
    }
}

/// The process's NCCL, opened on first use (the error is kept: it will not change).
pub fn get() -> Result<&'static Nccl, String> {
    static LIB: OnceLock<Result<Nccl, String>> = OnceLock::new();
    LIB.get_or_init(Nccl::open).as_ref().map_err(|e| e.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_loads_from_the_wheel_and_reports_its_version_without_a_gpu() {
        // The project venv's CUDA torch brings the nvidia-nccl wheel; libtorch_cuda
        // links it, so this finds the copy from the wheel already in the process.
        let nccl = get().expect("libnccl.so.2 from the venv's nvidia-nccl wheel");
        let (major, minor, _) = nccl.version().unwrap();
        assert_eq!(major, 2, "{}", nccl.source);
        assert!(
            minor >= 18,
            "NCCL 2.{minor} is older than the 2.18 the watchdog needs"
        );
        assert_eq!(nccl.source, "libnccl.so.2");
        // Result codes are described by NCCL itself (no GPU needed).
        assert!(
            nccl.error_string(4).contains("invalid argument"),
            "{}",
            nccl.error_string(4)
        );
    }

    #[test]
    fn versions_decode_in_both_of_ncclgetversions_schemes() {
        assert_eq!(decode_version(22809), (2, 28, 9));
        assert_eq!(decode_version(2804), (2, 8, 4));
    }
}
