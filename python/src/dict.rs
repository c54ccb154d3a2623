//! `SharedDict`: a dict in shared memory, over a `ShmHashMap<Vec<u8>, Vec<u8>>`,
//! opened by name from any process (fork or spawn workers, a `Pool`).
//!
//! Keys and values are stored as tagged bytes:
//!
//! - keys: `str`, `bytes`, `int`, `float`; as in a `dict`, keys that compare equal
//!   are one key (`1`, `1.0` and `True` are the int key `1`);
//! - values: those, plus `bool`, `None` and any bytes-like object (stored as
//!   `bytes`); a numpy array is stored as its bytes with its dtype and shape, and
//!   read back as an array of the same dtype and shape (a writable copy).
//!
//! Every read copies the value out of shared memory (`d[k]` returns a new object);
//! every write is atomic per key (another process sees the old or the new value);
//! `setdefault` is atomic (one shard lock).

use std::sync::Arc;

use pyo3::exceptions::{PyKeyError, PyMemoryError, PyTypeError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyList, PyString, PyTuple};

use shared_allocator::collections::ShmHashMap;
use shared_allocator::{AllocError, Error, FreeListAllocator, SegmentError};

use crate::errors::{self, Kind};

/// Root name of the map inside the segment.
const MAP_ROOT: &str = "shared_allocator.py.dict";
/// Default data-region size of a new dict's segment (sparse: pages are used as
/// entries need them).
const DEFAULT_CAPACITY: u64 = 256 << 20;

type Map = ShmHashMap<Vec<u8>, Vec<u8>, Arc<FreeListAllocator>>;

fn map_err(py: Python<'_>, e: Error) -> PyErr {
    match e {
        Error::Segment(s) => errors::segment(py, s),
        Error::Alloc(a @ (AllocError::OutOfMemory { .. } | AllocError::TooLarge { .. })) => {
            PyMemoryError::new_err(format!(
                "the SharedDict's segment is full ({a}); create it with a larger capacity"
            ))
        }
        Error::Alloc(a) => errors::alloc(py, a),
        Error::Collection(c) => errors::err(py, Kind::Corrupted, c.to_string()),
        Error::TypeMismatch { .. } => errors::err(py, Kind::WrongAllocator, e.to_string()),
        other => errors::err(py, Kind::Base, other.to_string()),
    }
}

// Tags of the encoded forms.
const T_STR: u8 = b's';
const T_BYTES: u8 = b'b';
const T_INT: u8 = b'i';
const T_BIGINT: u8 = b'I';
const T_FLOAT: u8 = b'f';
const T_TRUE: u8 = b'T';
const T_FALSE: u8 = b'F';
const T_NONE: u8 = b'n';
const T_ARRAY: u8 = b'a';

/// The plain `int` value of an `int` (or subclass) object: `int.__int__`, which
/// no subclass override of `__index__`, `__int__` or `__str__` changes.
fn exact_int<'py>(v: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    v.py().get_type::<PyInt>().getattr("__int__")?.call1((v,))
}

/// Stores an `int` (or subclass): 8 little-endian bytes if it fits `i64`, else its
/// minimal two's-complement bytes (never through `str()`, whose digit limit can
/// differ between processes).
fn encode_int(v: &Bound<'_, PyAny>, out: &mut Vec<u8>) -> PyResult<()> {
    let v = exact_int(v)?;
    match v.extract::<i64>() {
        Ok(i) => {
            out.push(T_INT);
            out.extend_from_slice(&i.to_le_bytes());
        }
        Err(_) => {
            let bits: u64 = v.call_method0("bit_length")?.extract()?;
            let kw = PyDict::new(v.py());
            kw.set_item("signed", true)?;
            let b = v.call_method("to_bytes", (bits / 8 + 1, "little"), Some(&kw))?;
            out.push(T_BIGINT);
            out.extend_from_slice(b.cast::<PyBytes>()?.as_bytes());
        }
    }
    Ok(())
}

/// The stored form of a key; equal keys (by Python's `==` for these types) get
/// equal bytes.
fn encode_key(k: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let mut out = Vec::new();
    if let Ok(s) = k.cast::<PyString>() {
        out.push(T_STR);
        out.extend_from_slice(s.to_str()?.as_bytes());
    } else if let Ok(b) = k.cast::<PyBytes>() {
        out.push(T_BYTES);
        out.extend_from_slice(b.as_bytes());
    } else if k.is_instance_of::<PyInt>() {
        // bool is an int subclass: True is the key 1, as in a dict.
        encode_int(k, &mut out)?;
    } else if let Ok(f) = k.cast::<PyFloat>() {
        let x = f.value();
        if x.is_nan() {
            return Err(PyTypeError::new_err("NaN cannot be a SharedDict key"));
        }
        if x.fract() == 0.0 && x.is_finite() {
            // 2.0 == 2: the int key.
            let i = k.py().import("builtins")?.getattr("int")?.call1((x,))?;
            encode_int(&i, &mut out)?;
        } else {
            out.push(T_FLOAT);
            out.extend_from_slice(&x.to_le_bytes());
        }
    } else {
        return Err(PyTypeError::new_err(format!(
            "SharedDict keys are str, bytes, int or float, not {}",
            k.get_type().name()?
        )));
    }
    Ok(out)
}

fn decode_int<'py>(py: Python<'py>, tag: u8, b: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    match tag {
        T_INT => {
            let a: [u8; 8] = b.try_into().map_err(|_| corrupt(py))?;
            Ok(i64::from_le_bytes(a).into_pyobject(py)?.into_any())
        }
        _ => {
            let kw = PyDict::new(py);
            kw.set_item("signed", true)?;
            py.get_type::<PyInt>().call_method(
                "from_bytes",
                (PyBytes::new(py, b), "little"),
                Some(&kw),
            )
        }
    }
}

fn corrupt(py: Python<'_>) -> PyErr {
    errors::err(
        py,
        Kind::Corrupted,
        "a SharedDict entry is not in its stored format",
    )
}

fn decode_key<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let (&tag, rest) = b.split_first().ok_or_else(|| corrupt(py))?;
    match tag {
        T_STR => {
            Ok(PyString::new(py, std::str::from_utf8(rest).map_err(|_| corrupt(py))?).into_any())
        }
        T_BYTES => Ok(PyBytes::new(py, rest).into_any()),
        T_INT | T_BIGINT => decode_int(py, tag, rest),
        T_FLOAT => {
            let a: [u8; 8] = rest.try_into().map_err(|_| corrupt(py))?;
            Ok(PyFloat::new(py, f64::from_le_bytes(a)).into_any())
        }
        _ => Err(corrupt(py)),
    }
}

fn encode_value(v: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let mut out = Vec::new();
    if v.is_none() {
        out.push(T_NONE);
    } else if let Ok(b) = v.cast::<PyBool>() {
        out.push(if b.is_true() { T_TRUE } else { T_FALSE });
    } else if let Ok(s) = v.cast::<PyString>() {
        out.push(T_STR);
        out.extend_from_slice(s.to_str()?.as_bytes());
    } else if let Ok(b) = v.cast::<PyBytes>() {
        out.push(T_BYTES);
        out.extend_from_slice(b.as_bytes());
    } else if v.is_instance_of::<PyInt>() {
        encode_int(v, &mut out)?;
    } else if let Ok(f) = v.cast::<PyFloat>() {
        out.push(T_FLOAT);
        out.extend_from_slice(&f.value().to_le_bytes());
    } else if v.hasattr("__array_interface__")? && v.hasattr("dtype")? {
        // A numpy array: dtype string, shape, then the C-order bytes. Only dtypes
        // that the dtype string describes whole: not structured (field names and
        // types), not object (process pointers), and no mask.
        let dt = v.getattr("dtype")?;
        if !dt.getattr("fields")?.is_none() || dt.getattr("hasobject")?.is_truthy()? {
            return Err(PyTypeError::new_err(format!(
                "SharedDict stores numpy arrays of plain dtypes, not {}",
                dt.repr()?
            )));
        }
        if v.hasattr("mask")? {
            return Err(PyTypeError::new_err(
                "SharedDict does not store masked arrays (the mask would be lost)",
            ));
        }
        let dtype: String = dt.getattr("str")?.extract()?;
        let shape: Vec<u64> = v.getattr("shape")?.extract()?;
        let data = v.call_method0("tobytes")?;
        let data = data.cast::<PyBytes>()?;
        out.push(T_ARRAY);
        out.push(
            u8::try_from(dtype.len()).map_err(|_| PyTypeError::new_err("dtype string too long"))?,
        );
        out.extend_from_slice(dtype.as_bytes());
        out.push(
            u8::try_from(shape.len()).map_err(|_| PyTypeError::new_err("too many dimensions"))?,
        );
        for d in shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(data.as_bytes());
    } else {
        // Any other bytes-like object (bytearray, memoryview, array.array...).
        let b = v
            .py()
            .import("builtins")?
            .getattr("bytes")?
            .call1((v,))
            .map_err(|_| {
                PyTypeError::new_err(format!(
                    "SharedDict values are str, bytes-like, int, float, bool, None or numpy arrays, not {}",
                    v.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                ))
            })?;
        out.push(T_BYTES);
        out.extend_from_slice(b.cast::<PyBytes>()?.as_bytes());
    }
    Ok(out)
}

fn decode_value<'py>(py: Python<'py>, b: &[u8]) -> PyResult<Bound<'py, PyAny>> {
    let (&tag, rest) = b.split_first().ok_or_else(|| corrupt(py))?;
    match tag {
        T_NONE => Ok(py.None().into_bound(py)),
        T_TRUE => Ok(PyBool::new(py, true).to_owned().into_any()),
        T_FALSE => Ok(PyBool::new(py, false).to_owned().into_any()),
        T_ARRAY => {
            let (&n, rest) = rest.split_first().ok_or_else(|| corrupt(py))?;
            let (dtype, rest) = rest
                .split_at_checked(n as usize)
                .ok_or_else(|| corrupt(py))?;
            let dtype = std::str::from_utf8(dtype).map_err(|_| corrupt(py))?;
            let (&nd, mut rest) = rest.split_first().ok_or_else(|| corrupt(py))?;
            let mut shape = Vec::with_capacity(nd as usize);
            for _ in 0..nd {
                let (d, r) = rest.split_at_checked(8).ok_or_else(|| corrupt(py))?;
                shape.push(u64::from_le_bytes(d.try_into().map_err(|_| corrupt(py))?));
                rest = r;
            }
            let np = py.import("numpy")?;
            let buf = py
                .import("builtins")?
                .getattr("bytearray")?
                .call1((PyBytes::new(py, rest),))?;
            let arr = np.call_method1("frombuffer", (buf, dtype))?;
            arr.call_method1("reshape", (PyTuple::new(py, shape)?,))
        }
        _ => decode_key(py, b),
    }
}

/// A dict in POSIX shared memory, shared by every process that opens it by name.
///
/// ``SharedDict(name, capacity=256 MiB, create=True)``: opens the dict's segment
/// ``name``, or creates it (``create=True``) with ``capacity`` bytes of data region
/// (sparse). The dict protocol: ``d[k]``, ``d[k] = v``, ``del d[k]``, ``k in d``,
/// ``len(d)``, ``get``, ``items``, ``keys``, ``values``, ``setdefault``, ``update``,
/// ``pop``, ``clear``, ``increment`` (atomic), iteration (over a snapshot of the keys). Keys: ``str``,
/// ``bytes``, ``int``, ``float``. Values: those, ``bool``, ``None``, bytes-like
/// objects, numpy arrays (dtype and shape kept). Reads return copies. Picklable
/// (by name), so it can be passed to ``multiprocessing`` workers (fork or spawn).
#[pyclass(module = "shared_allocator", name = "SharedDict", frozen)]
pub(crate) struct SharedDict {
    name: String,
    map: Map,
}

impl SharedDict {
    fn get_raw(&self, py: Python<'_>, k: &Bound<'_, PyAny>) -> PyResult<Option<Vec<u8>>> {
        let key = encode_key(k)?;
        self.map.get(&key).map_err(|e| map_err(py, e))
    }
}

#[pymethods]
impl SharedDict {
    #[new]
    #[pyo3(signature = (name, capacity = DEFAULT_CAPACITY, create = true))]
    fn new(py: Python<'_>, name: &str, capacity: u64, create: bool) -> PyResult<Self> {
        let mut created = false;
        let alloc = match FreeListAllocator::open(name) {
            Ok(a) => a,
            Err(SegmentError::NotFound { .. }) if create => {
                match FreeListAllocator::create(name, capacity) {
                    Ok(a) => {
                        created = true;
                        a
                    }
                    Err(SegmentError::AlreadyExists { .. }) => {
                        FreeListAllocator::open(name).map_err(|e| errors::segment(py, e))?
                    }
                    Err(e) => return Err(errors::segment(py, e)),
                }
            }
            Err(e) => return Err(errors::segment(py, e)),
        };
        let map = match Map::open(Arc::new(alloc), MAP_ROOT) {
            Ok(m) => m,
            Err(e) => {
                // A segment this call made that cannot hold the dict (too small a
                // capacity): remove its name, so that a retry with a larger
                // capacity creates a new one instead of reopening this one.
                if created {
                    let _ = shared_allocator::unlink(name);
                }
                return Err(map_err(py, e));
            }
        };
        Ok(SharedDict {
            name: name.to_owned(),
            map,
        })
    }

    /// The segment's name.
    #[getter]
    fn name(&self) -> &str {
        &self.name
    }

    fn __reduce__<'py>(slf: &Bound<'py, Self>) -> PyResult<Bound<'py, PyTuple>> {
        let py = slf.py();
        let cls = slf.get_type();
        // Reopened by name, never re-created: a worker must not make a new empty
        // dict after the parent unlinked the name.
        let args = (slf.get().name.as_str(), DEFAULT_CAPACITY, false).into_pyobject(py)?;
        PyTuple::new(py, [cls.into_any(), args.into_any()])
    }

    fn __len__(&self) -> usize {
        self.map.len()
    }

    fn __contains__(&self, py: Python<'_>, k: &Bound<'_, PyAny>) -> PyResult<bool> {
        let key = encode_key(k)?;
        self.map.contains_key(&key).map_err(|e| map_err(py, e))
    }

    fn __getitem__<'py>(
        &self,
        py: Python<'py>,
        k: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.get_raw(py, k)? {
            Some(v) => decode_value(py, &v),
            None => Err(PyKeyError::new_err(k.clone().unbind())),
        }
    }

    fn __setitem__(
        &self,
        py: Python<'_>,
        k: &Bound<'_, PyAny>,
        v: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let key = encode_key(k)?;
        let val = encode_value(v)?;
        self.map.insert(key, val).map_err(|e| map_err(py, e))?;
        Ok(())
    }

    fn __delitem__(&self, py: Python<'_>, k: &Bound<'_, PyAny>) -> PyResult<()> {
        let key = encode_key(k)?;
        match self.map.remove(&key).map_err(|e| map_err(py, e))? {
            Some(_) => Ok(()),
            None => Err(PyKeyError::new_err(k.clone().unbind())),
        }
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        self.keys(py)?.call_method0("__iter__")
    }

    /// ``d.get(k, default=None)``.
    #[pyo3(signature = (k, default = None))]
    fn get<'py>(
        &self,
        py: Python<'py>,
        k: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        match self.get_raw(py, k)? {
            Some(v) => decode_value(py, &v),
            None => Ok(default.unwrap_or_else(|| py.None().into_bound(py))),
        }
    }

    /// A list of the keys (a snapshot).
    fn keys<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let keys = self.map.keys().map_err(|e| map_err(py, e))?;
        let items: Vec<Bound<'py, PyAny>> = keys
            .iter()
            .map(|k| decode_key(py, k))
            .collect::<PyResult<_>>()?;
        PyList::new(py, items)
    }

    /// A list of the values (a snapshot).
    fn values<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let entries = self.map.entries().map_err(|e| map_err(py, e))?;
        let items: Vec<Bound<'py, PyAny>> = entries
            .iter()
            .map(|(_, v)| decode_value(py, v))
            .collect::<PyResult<_>>()?;
        PyList::new(py, items)
    }

    /// A list of ``(key, value)`` pairs (a snapshot).
    fn items<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyList>> {
        let entries = self.map.entries().map_err(|e| map_err(py, e))?;
        let items: Vec<Bound<'py, PyTuple>> = entries
            .iter()
            .map(|(k, v)| PyTuple::new(py, [decode_key(py, k)?, decode_value(py, v)?]))
            .collect::<PyResult<_>>()?;
        PyList::new(py, items)
    }

    /// ``d.setdefault(k, default=None)``: atomic (one lock of the key's shard).
    #[pyo3(signature = (k, default = None))]
    fn setdefault<'py>(
        &self,
        py: Python<'py>,
        k: &Bound<'py, PyAny>,
        default: Option<Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = encode_key(k)?;
        let default = default.unwrap_or_else(|| py.None().into_bound(py));
        let enc = encode_value(&default)?;
        let mut result = None;
        self.map
            .update(key, |cur| match cur {
                Some(v) => {
                    result = Some(v.clone());
                    Some(v)
                }
                None => {
                    result = Some(enc.clone());
                    Some(enc)
                }
            })
            .map_err(|e| map_err(py, e))?;
        decode_value(py, &result.unwrap_or_default())
    }

    /// ``d.increment(k, delta=1)``: adds ``delta`` to the int at ``k`` (0 if absent)
    /// atomically (one lock of the key's shard) and returns the new value; a
    /// ``TypeError`` if the value there is not an int.
    #[pyo3(signature = (k, delta = 1))]
    fn increment(&self, py: Python<'_>, k: &Bound<'_, PyAny>, delta: i64) -> PyResult<i64> {
        let key = encode_key(k)?;
        let mut out: Result<i64, &'static str> = Err("");
        self.map
            .update(key, |cur| {
                let now = match cur.as_deref() {
                    None => Some(0i64),
                    Some([T_INT, rest @ ..]) => rest.try_into().ok().map(i64::from_le_bytes),
                    Some(_) => None,
                };
                match now.and_then(|n| n.checked_add(delta)) {
                    Some(n) => {
                        out = Ok(n);
                        let mut v = vec![T_INT];
                        v.extend_from_slice(&n.to_le_bytes());
                        Some(v)
                    }
                    None => {
                        out = Err("the value is not an int that fits 64 bits after the increment");
                        cur
                    }
                }
            })
            .map_err(|e| map_err(py, e))?;
        out.map_err(PyTypeError::new_err)
    }

    /// ``d.update(other=(), **kwargs)``: a mapping (its ``keys()``) or an iterable
    /// of pairs, then the keyword arguments.
    #[pyo3(signature = (other = None, **kwargs))]
    fn update(
        &self,
        py: Python<'_>,
        other: Option<&Bound<'_, PyAny>>,
        kwargs: Option<&Bound<'_, PyDict>>,
    ) -> PyResult<()> {
        if let Some(o) = other {
            if o.hasattr("keys")? {
                for k in o.call_method0("keys")?.try_iter()? {
                    let k = k?;
                    let v = o.get_item(&k)?;
                    self.__setitem__(py, &k, &v)?;
                }
            } else {
                for pair in o.try_iter()? {
                    let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = pair?.extract()?;
                    self.__setitem__(py, &k, &v)?;
                }
            }
        }
        if let Some(kw) = kwargs {
            for (k, v) in kw.iter() {
                self.__setitem__(py, &k, &v)?;
            }
        }
        Ok(())
    }

    /// ``d.pop(k[, default])``.
    #[pyo3(signature = (k, *default))]
    fn pop<'py>(
        &self,
        py: Python<'py>,
        k: &Bound<'py, PyAny>,
        default: &Bound<'py, PyTuple>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let key = encode_key(k)?;
        match self.map.remove(&key).map_err(|e| map_err(py, e))? {
            Some(v) => decode_value(py, &v),
            None if !default.is_empty() => default.get_item(0),
            None => Err(PyKeyError::new_err(k.clone().unbind())),
        }
    }

    /// Removes every entry.
    fn clear(&self, py: Python<'_>) -> PyResult<()> {
        self.map.clear().map_err(|e| map_err(py, e))
    }

    /// ``dict(d)``: a plain dict copy.
    fn copy<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let d = PyDict::new(py);
        for (k, v) in self.map.entries().map_err(|e| map_err(py, e))? {
            d.set_item(decode_key(py, &k)?, decode_value(py, &v)?)?;
        }
        Ok(d)
    }

    /// Removes the dict's segment name (processes that have it open keep using it).
    fn unlink(&self, py: Python<'_>) -> PyResult<()> {
        shared_allocator::unlink(&self.name).map_err(|e| errors::segment(py, e))
    }

    fn __repr__(&self) -> String {
        format!("SharedDict({:?}, {} entries)", self.name, self.map.len())
    }
}
