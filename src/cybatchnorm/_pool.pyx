# A capped pool of large output buffers, for the package's own outputs only.
#
# Why: a fresh buffer of many MiB comes from mmap; the first write to each of
# its pages faults and the kernel zeroes the page, and freeing it unmaps it,
# so every call that allocates its outputs pays for that again (up to 1.7x the
# time of a call given its outputs, measured by `python -m cybatchnorm bench`).
# Buffers taken from here go back here when their last numpy view dies, and
# the next call of the same size reuses them with their pages still mapped.
# Nothing process-wide changes: numpy's allocator and malloc's settings are
# left alone; other arrays never touch this pool.
from libc.stdint cimport uintptr_t
from cpython.pythread cimport (PyThread_type_lock, PyThread_allocate_lock,
                               PyThread_acquire_lock, PyThread_release_lock, WAIT_LOCK)

cdef extern from *:
    """
    #include <stdlib.h>
    #if defined(_WIN32)
    #include <malloc.h>
    static void *cybn_block_alloc(size_t n, size_t align) { return _aligned_malloc(n, align); }
    static void cybn_block_free(void *p) { _aligned_free(p); }
    #else
    #include <sys/mman.h>
    static void *cybn_block_alloc(size_t n, size_t align) {
        void *p = NULL;
        if (posix_memalign(&p, align, n) != 0) return NULL;
    #if defined(MADV_HUGEPAGE)
        /* as numpy does for its own large arrays: fewer faults and TLB misses */
        if (align >= ((size_t)2 << 20)) madvise(p, n, MADV_HUGEPAGE);
    #endif
        return p;
    }
    static void cybn_block_free(void *p) { free(p); }
    #endif
    """
    void* block_alloc "cybn_block_alloc"(size_t n, size_t align) nogil
    void block_free "cybn_block_free"(void* p) nogil

cdef extern from "Python.h":
    # so that tracemalloc (and the benchmark's peak memory) sees pooled
    # buffers in use, as it sees numpy's own allocations
    int PyTraceMalloc_Track(unsigned int domain, uintptr_t ptr, size_t size)
    int PyTraceMalloc_Untrack(unsigned int domain, uintptr_t ptr)

cdef enum:
    TRACE_DOMAIN = 0x63796e62   # "cynb": this pool's tracemalloc domain
    SLOTS = 64                  # buffers the pool can hold at once
    HUGE = 4 << 20              # buffers this large are 2 MiB aligned, huge pages advised

#: Buffers smaller than this are not pooled: malloc reuses them without faults.
MIN_BYTES = 1 << 20

cdef void* _ptr[SLOTS]
cdef Py_ssize_t _size[SLOTS]
cdef Py_ssize_t _count = 0, _held = 0, _limit = 256 << 20
cdef Py_ssize_t _hits = 0, _misses = 0
cdef PyThread_type_lock _lock = PyThread_allocate_lock()


cdef void* _pop(Py_ssize_t i) noexcept nogil:
    # take slot i out of the pool (the lock held), keeping the others in
    # order, oldest first; returns its buffer
    global _count, _held
    cdef void* p = _ptr[i]
    _held -= _size[i]
    _count -= 1
    while i < _count:
        _ptr[i] = _ptr[i + 1]
        _size[i] = _size[i + 1]
        i += 1
    return p


cdef void* _take(Py_ssize_t n):
    # the most recently returned buffer of exactly n bytes (still warm in the
    # caches), or a fresh one; NULL when there is no memory
    global _hits, _misses
    cdef Py_ssize_t i
    cdef void* p = NULL
    PyThread_acquire_lock(_lock, WAIT_LOCK)
    i = _count - 1
    while i >= 0:
        if _size[i] == n:
            p = _pop(i)
            _hits += 1
            break
        i -= 1
    if p == NULL:
        _misses += 1
    PyThread_release_lock(_lock)
    if p == NULL:
        p = block_alloc(n, (2 << 20) if n >= HUGE else 64)
    return p


cdef void _give_back(void* p, Py_ssize_t n) noexcept:
    # keep p for reuse, evicting the oldest buffers while the pool would hold
    # more than its limit; a buffer larger than the limit is freed at once
    global _count, _held
    cdef void* drop[SLOTS + 1]
    cdef Py_ssize_t nd = 0, i
    PyThread_acquire_lock(_lock, WAIT_LOCK)
    if n > _limit:
        drop[nd] = p
        nd += 1
    else:
        while _count > 0 and (_held + n > _limit or _count == SLOTS):
            drop[nd] = _pop(0)
            nd += 1
        _ptr[_count] = p
        _size[_count] = n
        _count += 1
        _held += n
    PyThread_release_lock(_lock)
    for i in range(nd):
        block_free(drop[i])


cdef class Block:
    """One pooled buffer of ``nbytes`` bytes, seen by numpy through the buffer
    protocol; the buffer returns to the pool when the Block is collected
    (that is, when the last array viewing it is)."""
    cdef void* ptr
    cdef readonly Py_ssize_t nbytes
    cdef Py_ssize_t _shape[1]

    def __cinit__(self, Py_ssize_t nbytes):
        self.ptr = _take(nbytes)
        if self.ptr == NULL:
            raise MemoryError(f"out: cannot allocate {nbytes} bytes")
        self.nbytes = nbytes
        PyTraceMalloc_Track(TRACE_DOMAIN, <uintptr_t>self.ptr, nbytes)

    def __getbuffer__(self, Py_buffer* buf, int flags):
        self._shape[0] = self.nbytes
        buf.buf = self.ptr
        buf.obj = self
        buf.len = self.nbytes
        buf.readonly = 0
        buf.itemsize = 1
        buf.format = "B"
        buf.ndim = 1
        buf.shape = self._shape
        buf.strides = NULL
        buf.suboffsets = NULL
        buf.internal = NULL

    def __releasebuffer__(self, Py_buffer* buf):
        pass

    def __dealloc__(self):
        if self.ptr != NULL:
            PyTraceMalloc_Untrack(TRACE_DOMAIN, <uintptr_t>self.ptr)
            _give_back(self.ptr, self.nbytes)


def set_pool_limit(Py_ssize_t nbytes):
    """Set the pool's limit in bytes (0: no pooling); return the previous one.
    Buffers held beyond the new limit are released now."""
    global _limit
    if nbytes < 0:
        raise ValueError(f"nbytes: expected a number of bytes >= 0, got {nbytes}")
    old = _limit
    _limit = nbytes
    _trim(nbytes)
    return old


cdef Py_ssize_t _trim(Py_ssize_t keep):
    # free the oldest buffers until the pool holds at most ``keep`` bytes
    cdef void* drop[SLOTS]
    cdef Py_ssize_t nd = 0, freed = 0, i
    PyThread_acquire_lock(_lock, WAIT_LOCK)
    while _count > 0 and _held > keep:
        freed += _size[0]
        drop[nd] = _pop(0)
        nd += 1
    PyThread_release_lock(_lock)
    for i in range(nd):
        block_free(drop[i])
    return freed


def release_pool():
    """Return every held buffer to the system; the number of bytes released."""
    return _trim(0)


def pool_info():
    """The pool's state: limit, bytes and buffers held, reuses and fresh allocations."""
    PyThread_acquire_lock(_lock, WAIT_LOCK)
    d = {"limit": _limit, "held": _held, "buffers": _count, "reused": _hits,
         "allocated": _misses}
    PyThread_release_lock(_lock)
    return d
