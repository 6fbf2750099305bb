//! Named buffer layouts: one table (name, shape, offset) describes every tensor in a buffer, and code
//! iterates the table instead of keeping parallel arrays in step by hand. A `Slab` is one contiguous
//! buffer plus its layout.

use std::ops::Range;
use std::sync::Arc;

use crate::storage::{Allocator, Storage, ZeroBits};
use crate::{Error, Result};

/// One row of a layout table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    pub name: String,
    pub shape: Vec<usize>,
    /// Offset in elements from the start of the buffer.
    pub offset: usize,
}

impl TensorSpec {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    pub fn range(&self) -> Range<usize> {
        self.offset..self.offset + self.numel()
    }
}

/// Index of a tensor in its layout: resolved once, so hot loops never look names up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TensorId(pub usize);

/// An ordered table of tensors packed back to back in one buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    specs: Vec<TensorSpec>,
    total: usize,
}

impl Layout {
    /// Pack `(name, shape)` pairs in order. Names must be unique.
    pub fn new<S: Into<String>>(entries: impl IntoIterator<Item = (S, Vec<usize>)>) -> Self {
        let mut specs = Vec::new();
        let mut offset = 0;
        for (name, shape) in entries {
            let name = name.into();
            assert!(specs.iter().all(|s: &TensorSpec| s.name != name), "duplicate tensor name {name}");
            let n: usize = shape.iter().product();
            specs.push(TensorSpec { name, shape, offset });
            offset += n;
        }
        Layout { specs, total: offset }
    }
    pub fn total(&self) -> usize {
        self.total
    }
    pub fn specs(&self) -> &[TensorSpec] {
        &self.specs
    }
    pub fn id(&self, name: &str) -> Option<TensorId> {
        self.specs.iter().position(|s| s.name == name).map(TensorId)
    }
    /// Like `id`, but a missing name is a programming error.
    pub fn expect_id(&self, name: &str) -> TensorId {
        self.id(name).unwrap_or_else(|| panic!("layout has no tensor `{name}`"))
    }
    pub fn spec(&self, id: TensorId) -> &TensorSpec {
        &self.specs[id.0]
    }
    pub fn range(&self, id: TensorId) -> Range<usize> {
        self.specs[id.0].range()
    }
    /// Range of slice `i` along the leading dimension (e.g. layer `l` of an `(L, C)` tensor).
    pub fn range_at(&self, id: TensorId, i: usize) -> Range<usize> {
        let s = &self.specs[id.0];
        let stride: usize = s.shape[1..].iter().product();
        assert!(i < s.shape[0], "{}: index {i} out of {}", s.name, s.shape[0]);
        let start = s.offset + i * stride;
        start..start + stride
    }
}

/// One contiguous buffer of `T` described by a shared layout; the buffer is host memory or a
/// backend's host-addressable memory (`Storage`).
#[derive(Debug)]
pub struct Slab<T> {
    pub layout: Arc<Layout>,
    pub data: Storage<T>,
}

impl<T: Clone> Clone for Slab<T> {
    fn clone(&self) -> Self {
        Slab { layout: self.layout.clone(), data: self.data.clone() }
    }
}

impl<T: ZeroBits> Slab<T> {
    /// Zeros on the host heap.
    pub fn zeros(layout: Arc<Layout>) -> Self {
        let data = Storage::zeros(layout.total());
        Slab { layout, data }
    }
    /// Zeros from `alloc` (a backend's memory), or the host heap when None.
    pub fn zeros_in(layout: Arc<Layout>, alloc: Option<&Arc<dyn Allocator>>) -> Result<Self> {
        let data = Storage::zeros_in(layout.total(), alloc)?;
        Ok(Slab { layout, data })
    }
    /// `data` (host memory) laid out as `layout`.
    pub fn from_vec(layout: Arc<Layout>, data: Vec<T>) -> Result<Self> {
        if data.len() != layout.total() {
            return Err(Error::Shape { name: "slab".into(), expected: vec![layout.total()], found: vec![data.len()] });
        }
        Ok(Slab { layout, data: data.into() })
    }
    /// `data` copied into memory from `alloc` (or moved, on the host heap when None).
    pub fn from_vec_in(layout: Arc<Layout>, data: Vec<T>, alloc: Option<&Arc<dyn Allocator>>) -> Result<Self> {
        if alloc.is_none() {
            return Slab::from_vec(layout, data);
        }
        let mut s = Slab::zeros_in(layout, alloc)?;
        if data.len() != s.data.len() {
            return Err(Error::Shape { name: "slab".into(), expected: vec![s.data.len()], found: vec![data.len()] });
        }
        s.data.copy_from_slice(&data);
        Ok(s)
    }
}

impl<T> Slab<T> {
    pub fn get(&self, id: TensorId) -> &[T] {
        &self.data[self.layout.range(id)]
    }
    pub fn get_mut(&mut self, id: TensorId) -> &mut [T] {
        let r = self.layout.range(id);
        &mut self.data[r]
    }
    pub fn by_name(&self, name: &str) -> Option<&[T]> {
        self.layout.id(name).map(|id| self.get(id))
    }
    pub fn by_name_mut(&mut self, name: &str) -> Option<&mut [T]> {
        let id = self.layout.id(name)?;
        Some(self.get_mut(id))
    }
    /// Iterate `(spec, values)` over the layout table.
    pub fn iter(&self) -> impl Iterator<Item = (&TensorSpec, &[T])> {
        self.layout.specs().iter().map(|s| (s, &self.data[s.range()]))
    }
    /// Mutable views of `N` pairwise-disjoint ranges (panics on overlap: a layout bug).
    pub fn disjoint_mut<const N: usize>(&mut self, ranges: [Range<usize>; N]) -> [&mut [T]; N] {
        self.data.get_disjoint_mut(ranges).unwrap_or_else(|e| panic!("overlapping or out-of-bounds slab views: {e:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn layout_packs_in_order_and_indexes_layers() {
        let l = Layout::new([("a", vec![2, 3]), ("b", vec![4])]);
        assert_eq!(l.total(), 10);
        let a = l.expect_id("a");
        assert_eq!(l.range(l.expect_id("b")), 6..10);
        assert_eq!(l.range_at(a, 1), 3..6);
    }
    #[test]
    fn slab_disjoint_views_alias_nothing() {
        let l = Arc::new(Layout::new([("a", vec![2]), ("b", vec![2])]));
        let mut s: Slab<f32> = Slab::zeros(l);
        let [a, b] = s.disjoint_mut([0..2, 2..4]);
        a[0] = 1.0;
        b[1] = 2.0;
        assert_eq!(s.data, vec![1.0, 0.0, 0.0, 2.0]);
    }
}
