//! The methods every allocator class has, generated into each class's
//! `#[pymethods]` block (PyO3 wants one block per class without the
//! `multiple-pymethods` feature). Each class has a field `h: Handle<A>`.

/// Expands to `#[pymethods] impl $ty { <class-specific items> <common methods> }`.
macro_rules! allocator_class {
    ($ty:ident, $pyname:literal, { $($extra:tt)* }) => {
        #[pymethods]
        impl $ty {
            $($extra)*

            /// Copies ``data`` (``bytes`` or any bytes-like object) into shared memory at
            /// ``offset``. The whole range must lie inside one allocated block.
            ///
            /// Raises ``OutOfBoundsError`` / ``NotAllocatedError`` (both ``ValueError``)
            /// otherwise, and ``TypeError`` for data that is not bytes-like. Copies above
            /// 4 KiB run with the GIL released.
            fn write(
                &self,
                py: Python<'_>,
                offset: &Bound<'_, PyAny>,
                data: &Bound<'_, PyAny>,
            ) -> PyResult<()> {
                let core = self.h.get(py)?;
                let rel = crate::core::int_arg(py, offset, "offset")?;
                core.write(py, rel, data)
            }

            /// Returns ``size`` bytes at ``offset`` as ``bytes``. The range must lie
            /// inside one allocated block (``OutOfBoundsError`` / ``NotAllocatedError``
            /// otherwise). Copies above 4 KiB run with the GIL released.
            fn read<'py>(
                &self,
                py: Python<'py>,
                offset: &Bound<'py, PyAny>,
                size: &Bound<'py, PyAny>,
            ) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
                let core = self.h.get(py)?;
                let rel = crate::core::int_arg(py, offset, "offset")?;
                let size = crate::core::int_arg(py, size, "size")?;
                core.read(py, rel, size)
            }

            /// Returns a zero-copy ``SharedView`` of ``size`` bytes at ``offset`` (inside
            /// one allocated block). It supports the buffer protocol, so
            /// ``numpy.frombuffer(view, dtype)`` shares the memory. With
            /// ``readonly=True`` the view refuses writable buffers.
            ///
            /// While the view is alive, freeing its block or resetting the allocator
            /// through this object raises ``ExportedViewsError`` (a ``BufferError``).
            #[pyo3(signature = (offset, size, readonly = false))]
            fn view(
                &self,
                py: Python<'_>,
                offset: &Bound<'_, PyAny>,
                size: &Bound<'_, PyAny>,
                readonly: bool,
            ) -> PyResult<crate::view::SharedView> {
                let core = self.h.get(py)?;
                let rel = crate::core::int_arg(py, offset, "offset")?;
                let size = crate::core::int_arg(py, size, "size")?;
                let len = u64::try_from(size).map_err(|_| {
                    crate::errors::err(
                        py,
                        crate::errors::Kind::InvalidArgument,
                        format!("size must be >= 0, got {size}"),
                    )
                })?;
                let off = core.abs(py, rel, len)?;
                // Views obey the segment's mode exactly as `write` does (read-only
                // ones too: a typed segment's blocks change under typed handles'
                // rules, not plain memory).
                shared_allocator::__layout::require_raw(core.alloc.segment())
                    .map_err(|e| crate::errors::access(py, e, rel as u64, len))?;
                // Not a root's block either (a lock's or channel's bytes are
                // reached only through its own API).
                core.alloc
                    .check_raw_range(off, len)
                    .map_err(|e| crate::errors::access(py, e, rel as u64, len))?;
                crate::view::SharedView::new(&self.h.core, off, rel as u64, len as usize, readonly)
                    .ok_or_else(|| {
                        crate::errors::err(
                            py,
                            crate::errors::Kind::OutOfBounds,
                            format!("range offset={rel} size={len} is outside the mapping"),
                        )
                    })
            }

            /// Bytes currently handed out (as rounded by the allocator).
            fn used_bytes(&self, py: Python<'_>) -> PyResult<u64> {
                Ok(self.h.get(py)?.alloc.used_bytes())
            }

            /// Bytes still available for allocation (possibly fragmented), at most
            /// ``capacity`` (the data region may be a little larger than ``capacity``,
            /// which counts what the constructor asked for).
            fn available_bytes(&self, py: Python<'_>) -> PyResult<u64> {
                Ok(self.h.get(py)?.alloc.available_bytes().min(self.capacity()))
            }

            /// The segment name as given to the constructor.
            #[getter]
            fn name(&self) -> &str {
                &self.h.core.name
            }

            /// Offset of the data region from the segment base: add it to an offset
            /// from this package to get the offset the Rust API uses for the same bytes.
            #[getter]
            fn data_offset(&self) -> u64 {
                self.h.core.base
            }

            /// Whether ``close()`` was called.
            #[getter]
            fn closed(&self) -> bool {
                self.h.is_closed()
            }

            /// Number of ``SharedView`` objects made through this object and still alive.
            #[getter]
            fn exported_views(&self) -> usize {
                self.h.core.exports.count()
            }

            /// Closes this handle: later calls on it raise ``ClosedError`` (a
            /// ``ValueError``). The segment itself stays (see ``unlink``); the mapping
            /// is released once this object and all its views are gone. Idempotent.
            ///
            /// If the segment has the *remove on last close* policy and no other handle
            /// (in any process) is attached, the name is removed now, as dropping the
            /// last handle would. A handle inherited through ``fork`` never removes on
            /// ``close()`` (it cannot tell its parent's handle from its own); ``shm-alloc
            /// gc`` or the last other handle removes the name then.
            fn close(&self, py: Python<'_>) {
                if self.h.is_closed() {
                    return;
                }
                self.h.close();
                let core = &self.h.core;
                if core.pid != std::process::id() {
                    return;
                }
                let seg = shared_allocator::ShmAllocator::segment(&core.alloc);
                let Some(ino) = seg.inode() else { return };
                let me = shared_allocator::alloc::Inspect::registry(&core.alloc)
                    .slots
                    .iter()
                    .find(|s| s.is_self)
                    .map(|s| s.slot);
                let entry = me.map(|m| (ino, m));
                *self.h.closed_slot.lock().unwrap_or_else(|e| e.into_inner()) = entry;
                // This process's closed handles still hold their slots: not counted.
                let closed = crate::lifecycle::note_closed(entry, ino);
                if seg.removes_on_last_close() {
                    py.detach(|| {
                        let _ = seg.remove_if_unattached_except(me, &|s| closed.contains(&s));
                    });
                }
            }

            /// Removes the segment's name from the system (``shm_unlink``). Processes
            /// that have it open keep using it; new opens fail. Works after ``close()``.
            /// Raises ``NotFoundError`` (a ``FileNotFoundError``) if already removed.
            fn unlink(&self, py: Python<'_>) -> PyResult<()> {
                let name = self.h.core.name.clone();
                shared_allocator::unlink(&name).map_err(|e| crate::errors::segment(py, e))
            }

            /// A snapshot of use as a dict: ``capacity``, ``live_blocks`` (``None`` for
            /// the bump allocator), ``live_bytes``, ``free_bytes``, ``cached_bytes``
            /// (free blocks held in per-process caches) and ``classes`` (per size
            /// class: ``block_size``, ``spans``, ``live_blocks``, ``free_blocks``).
            fn stats<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
                let core = self.h.get(py)?;
                crate::lifecycle::stats_dict(py, &shared_allocator::ShmAllocator::stats(&core.alloc))
            }

            /// The processes attached to the segment, from its registry: one dict per
            /// handle with ``slot``, ``pid`` (in the holder's pid namespace),
            /// ``start_time_ns``, ``alive`` (``False``: it died and awaits reclaim),
            /// ``generation``, ``is_self``, ``intents`` and ``pins``.
            fn processes<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyList>> {
                let core = self.h.get(py)?;
                crate::lifecycle::processes_list(py, &shared_allocator::alloc::Inspect::registry(&core.alloc))
            }

            /// The largest block one ``allocate`` could get now, in bytes; never more
            /// than ``available_bytes()`` (so never more than ``capacity``, even where
            /// the data region is rounded up past it by size classes).
            fn largest_free_block(&self, py: Python<'_>) -> PyResult<u64> {
                let core = self.h.get(py)?;
                let largest =
                    py.detach(|| shared_allocator::alloc::Inspect::largest_free_block(&core.alloc));
                Ok(largest.min(core.alloc.available_bytes()).min(self.capacity()))
            }

            /// Sets (or clears) the *remove on last close* policy of the segment, for
            /// every handle in every process: the last attached handle to close
            /// removes the name. Segments this process created get it at exit by
            /// default; ``False`` also opts out of that.
            fn set_remove_on_last_close(&self, py: Python<'_>, on: bool) -> PyResult<()> {
                let core = self.h.get(py)?;
                let seg = shared_allocator::ShmAllocator::segment(&core.alloc);
                seg.set_remove_on_last_close(on);
                if !on {
                    crate::lifecycle::forget(seg);
                }
                Ok(())
            }

            /// Whether the segment has the *remove on last close* policy now.
            #[getter]
            fn remove_on_last_close(&self, py: Python<'_>) -> PyResult<bool> {
                let core = self.h.get(py)?;
                Ok(shared_allocator::ShmAllocator::segment(&core.alloc).removes_on_last_close())
            }

            /// Returns the allocator itself.
            fn __enter__(slf: Py<Self>) -> Py<Self> {
                slf
            }

            /// Calls ``close()``; exceptions propagate.
            #[pyo3(signature = (_exc_type=None, _exc=None, _tb=None))]
            fn __exit__(
                &self,
                _exc_type: Option<&Bound<'_, PyAny>>,
                _exc: Option<&Bound<'_, PyAny>>,
                _tb: Option<&Bound<'_, PyAny>>,
            ) -> bool {
                self.h.close();
                false
            }

            fn __repr__(&self) -> String {
                format!(
                    "<shared_allocator.{} name={:?} capacity={}{}>",
                    $pyname,
                    self.h.core.name,
                    self.capacity(),
                    if self.h.is_closed() { " closed" } else { "" }
                )
            }
        }
    };
}

pub(crate) use allocator_class;
