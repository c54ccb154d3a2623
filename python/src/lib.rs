//! Python bindings of `shared_allocator`: the seed Python package's API
//! (`BumpAllocator`, `FreeListAllocator`, `SlabAllocator`) on the Rust engine.
//!
//! Built with maturin as `shared_allocator._native`; the pure-Python package in
//! `python/shared_allocator` re-exports the classes and defines the exceptions.
//! See `python/README.md` for the Python-level documentation.

#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]
#![warn(clippy::undocumented_unsafe_blocks)]
#![warn(clippy::missing_safety_doc)]

mod bump;
mod common;
mod core;
mod dict;
mod errors;
mod freelist;
mod lifecycle;
mod slab;
mod view;

use pyo3::prelude::*;

/// The extension module `shared_allocator._native`.
#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<bump::PyBump>()?;
    m.add_class::<freelist::PyFreeList>()?;
    m.add_class::<slab::PySlab>()?;
    m.add_class::<view::SharedView>()?;
    m.add_class::<dict::SharedDict>()?;
    m.add("GIL_RELEASE_THRESHOLD", core::GIL_RELEASE_THRESHOLD)?;
    // Segments this process created get the remove-on-last-close policy at exit
    // (see `lifecycle`).
    let at_exit = wrap_pyfunction!(lifecycle::_remove_created_at_exit, m)?;
    m.py()
        .import("atexit")?
        .call_method1("register", (at_exit,))?;
    Ok(())
}
