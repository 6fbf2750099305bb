//! Owned element buffers that live in host memory (a `Vec`) or in memory from an external allocator
//! that host and device can both address (CUDA managed memory). Either way the buffer is a `[T]` to
//! the code that uses it, so a model indexes its parameters and activations the same way on every
//! backend: a device backend allocates its slabs with its [`Allocator`] and launches kernels on the
//! slices' addresses, and the host touches them only where the model reads results (the loss) after
//! the backend's `synchronize`.

use std::fmt;
use std::ops::{Deref, DerefMut};
use std::ptr::NonNull;
use std::sync::Arc;

use crate::{Error, Result};

/// Element types whose all-zero bit pattern is their `Default` value (IEEE floats, integers), so an
/// allocator's zeroed memory is a buffer of defaults without touching it from the host.
///
/// # Safety
/// Implement only for types for which `zeroed::<T>() == T::default()` and every bit pattern is valid.
pub unsafe trait ZeroBits: Copy + Default {}
// SAFETY: zero bits are 0 / +0.0 for each of these, and every bit pattern is a valid value.
unsafe impl ZeroBits for f32 {}
unsafe impl ZeroBits for f64 {}
unsafe impl ZeroBits for u8 {}
unsafe impl ZeroBits for u16 {}
unsafe impl ZeroBits for u32 {}
unsafe impl ZeroBits for i32 {}

/// Memory a host pointer can address, from outside the Rust heap (e.g. `cuMemAllocManaged`).
pub trait Allocator: Send + Sync + fmt::Debug {
    /// What the memory is, for messages and the memory ledger (e.g. "cuda-managed").
    fn name(&self) -> &'static str;
    /// `bytes` zeroed bytes, aligned to at least 256, valid until `free`. `bytes` > 0.
    fn alloc_zeroed(&self, bytes: usize) -> Result<NonNull<u8>>;
    /// Release an allocation.
    ///
    /// # Safety
    /// `ptr` came from `alloc_zeroed(bytes)` of this allocator and is freed exactly once, after every
    /// use (including device work still queued on it).
    unsafe fn free(&self, ptr: NonNull<u8>, bytes: usize);
}

enum Repr<T> {
    Host(Vec<T>),
    External(External<T>),
}

/// An allocation of `len` elements from `alloc`, freed on drop.
struct External<T> {
    ptr: NonNull<T>,
    len: usize,
    alloc: Arc<dyn Allocator>,
}

impl<T> External<T> {
    fn slice(&self) -> &[T] {
        // SAFETY: ptr holds len initialised (zeroed ZeroBits, then written) elements owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    fn slice_mut(&mut self) -> &mut [T] {
        // SAFETY: as in slice; &mut self makes the view exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for External<T> {
    fn drop(&mut self) {
        // SAFETY: allocated by this allocator with len * size_of::<T>() bytes (Storage::zeros_in), freed
        // once here; the elements are ZeroBits (Copy), so nothing drops element-wise.
        unsafe { self.alloc.free(self.ptr.cast(), self.len * size_of::<T>()) };
    }
}

/// An owned buffer of `T`: a `Vec` or an external allocation; dereferences to `[T]`.
pub struct Storage<T> {
    repr: Repr<T>,
}

// SAFETY: an external allocation is owned exclusively by its Storage (like a Box), and its allocator
// is Send + Sync; so Storage<T> is Send/Sync exactly when T is.
unsafe impl<T: Send> Send for Storage<T> {}
unsafe impl<T: Sync> Sync for Storage<T> {}

impl<T> Storage<T> {
    /// The allocator's name, or "host" for a `Vec`.
    pub fn memory(&self) -> &'static str {
        match &self.repr {
            Repr::Host(_) => "host",
            Repr::External(e) => e.alloc.name(),
        }
    }
}

impl<T: ZeroBits> Storage<T> {
    /// `n` zeros from `alloc`, or on the host heap when `alloc` is None.
    pub fn zeros_in(n: usize, alloc: Option<&Arc<dyn Allocator>>) -> Result<Self> {
        let Some(alloc) = alloc.filter(|_| n > 0 && size_of::<T>() > 0) else {
            return Ok(Storage { repr: Repr::Host(vec![T::default(); n]) });
        };
        let bytes = n
            .checked_mul(size_of::<T>())
            .ok_or_else(|| Error::config("allocation", format!("{n} elements overflow usize bytes")))?;
        let ptr = alloc.alloc_zeroed(bytes)?;
        if ptr.as_ptr().align_offset(align_of::<T>()) != 0 {
            // SAFETY: just allocated with these bytes, not used.
            unsafe { alloc.free(ptr, bytes) };
            return Err(Error::Other(format!("{}: allocation not aligned for its elements", alloc.name())));
        }
        Ok(Storage { repr: Repr::External(External { ptr: ptr.cast(), len: n, alloc: alloc.clone() }) })
    }
    /// `n` zeros on the host heap.
    pub fn zeros(n: usize) -> Self {
        Storage { repr: Repr::Host(vec![T::default(); n]) }
    }
}

impl<T: Clone> Storage<T> {
    /// The elements as a `Vec` (a move for host storage, a copy for external memory).
    pub fn into_vec(self) -> Vec<T> {
        match self.repr {
            Repr::Host(v) => v,
            Repr::External(e) => e.slice().to_vec(),
        }
    }
}

impl<T> From<Vec<T>> for Storage<T> {
    fn from(v: Vec<T>) -> Self {
        Storage { repr: Repr::Host(v) }
    }
}

impl<T> Deref for Storage<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        match &self.repr {
            Repr::Host(v) => v,
            Repr::External(e) => e.slice(),
        }
    }
}

impl<T> DerefMut for Storage<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        match &mut self.repr {
            Repr::Host(v) => v,
            Repr::External(e) => e.slice_mut(),
        }
    }
}

impl<T: Clone> Clone for Storage<T> {
    /// A copy in the same kind of memory. Panics if the external allocator fails (as `Vec` aborts).
    fn clone(&self) -> Self {
        match &self.repr {
            Repr::Host(v) => Storage { repr: Repr::Host(v.clone()) },
            Repr::External(e) => {
                // External storage only ever holds ZeroBits elements (`zeros_in`), which are Copy; the
                // bound here is Clone so that types deriving Clone over a Slab<T> need no extra bound.
                let bytes = e.len * size_of::<T>();
                let ptr = e
                    .alloc
                    .alloc_zeroed(bytes)
                    .unwrap_or_else(|err| panic!("cloning a {} buffer: {err}", e.alloc.name()))
                    .cast::<T>();
                for (i, x) in e.slice().iter().enumerate() {
                    // SAFETY: ptr has room for len elements, aligned as e.ptr was by the same allocator.
                    unsafe { ptr.as_ptr().add(i).write(x.clone()) };
                }
                Storage { repr: Repr::External(External { ptr, len: e.len, alloc: e.alloc.clone() }) }
            }
        }
    }
}

impl<'a, T> IntoIterator for &'a Storage<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl<'a, T> IntoIterator for &'a mut Storage<T> {
    type Item = &'a mut T;
    type IntoIter = std::slice::IterMut<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter_mut()
    }
}

impl<T: fmt::Debug> fmt::Debug for Storage<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

impl<T: PartialEq> PartialEq for Storage<T> {
    fn eq(&self, other: &Self) -> bool {
        **self == **other
    }
}

impl<T: PartialEq> PartialEq<Vec<T>> for Storage<T> {
    fn eq(&self, other: &Vec<T>) -> bool {
        **self == other[..]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A host allocator that counts live bytes: stands in for device-visible memory.
    #[derive(Debug, Default)]
    struct Counting(AtomicUsize);

    impl Allocator for Counting {
        fn name(&self) -> &'static str {
            "counting"
        }
        fn alloc_zeroed(&self, bytes: usize) -> Result<NonNull<u8>> {
            let layout = std::alloc::Layout::from_size_align(bytes, 256).unwrap();
            self.0.fetch_add(bytes, Ordering::SeqCst);
            // SAFETY: bytes > 0 (the trait's contract).
            NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).ok_or(Error::Other("oom".into()))
        }
        unsafe fn free(&self, ptr: NonNull<u8>, bytes: usize) {
            self.0.fetch_sub(bytes, Ordering::SeqCst);
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(ptr.as_ptr(), std::alloc::Layout::from_size_align(bytes, 256).unwrap()) };
        }
    }

    #[test]
    fn external_storage_is_zeroed_indexable_cloned_in_kind_and_freed() {
        let a = Arc::new(Counting::default());
        let dynalloc: Arc<dyn Allocator> = a.clone();
        {
            let mut s: Storage<f32> = Storage::zeros_in(10, Some(&dynalloc)).unwrap();
            assert_eq!((s.memory(), s.len(), s.iter().sum::<f32>()), ("counting", 10, 0.0));
            s[3] = 2.5;
            let c = s.clone();
            assert_eq!((c.memory(), c[3]), ("counting", 2.5));
            assert_eq!(a.0.load(Ordering::SeqCst), 80);
            assert_eq!(c.into_vec()[3], 2.5);
            assert_eq!(s, vec![0.0, 0.0, 0.0, 2.5, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
        }
        assert_eq!(a.0.load(Ordering::SeqCst), 0, "every allocation freed");
        let host: Storage<f32> = Storage::zeros_in(4, None).unwrap();
        assert_eq!((host.memory(), host.len()), ("host", 4));
        let empty: Storage<u8> = Storage::zeros_in(0, Some(&dynalloc)).unwrap();
        assert_eq!(empty.memory(), "host");
    }
}
