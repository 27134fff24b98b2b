# The only place that touches OpenMP. Every kernel cimports from here, so a
# compiler without OpenMP still builds the package and the kernels run serially
# (Cython's prange degrades to a plain loop when _OPENMP is not defined).
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    #define CYBN_OPENMP_ENABLED 1
    #else
    #define CYBN_OPENMP_ENABLED 0
    static int omp_get_max_threads(void) { return 1; }
    static int omp_get_thread_num(void) { return 0; }
    #endif
    #if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__) && \
        defined(__AVX512VL__)
    #define CYBN_SIMD "avx512"
    #elif defined(__AVX2__)
    #define CYBN_SIMD "avx2"
    #else
    #define CYBN_SIMD "baseline"
    #endif
    #if defined(__GNUC__) && (defined(__x86_64__) || defined(__i386__))
    static inline int cybn_cpu_has_avx2(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2");
    }
    static inline int cybn_cpu_has_avx512(void) {
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("avx512f")
            && __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq")
            && __builtin_cpu_supports("avx512vl");
    }
    #else
    static inline int cybn_cpu_has_avx2(void) { return 0; }
    static inline int cybn_cpu_has_avx512(void) { return 0; }
    #endif
    #ifndef CYBN_BUILD_CFLAGS
    #define CYBN_BUILD_CFLAGS "unknown"
    #endif
    #ifndef CYBN_BUILD_LDFLAGS
    #define CYBN_BUILD_LDFLAGS "unknown"
    #endif
    #ifndef CYBN_OPENMP_STATUS
    #define CYBN_OPENMP_STATUS "unknown"
    #endif
    /* the compiler that compiled this very module, as it names itself */
    #define CYBN_STR_(x) #x
    #define CYBN_STR(x) CYBN_STR_(x)
    #if defined(__clang__)
    #define CYBN_COMPILER "clang " __clang_version__
    #elif defined(__GNUC__)
    #define CYBN_COMPILER "gcc " __VERSION__
    #elif defined(_MSC_FULL_VER)
    #define CYBN_COMPILER "msvc " CYBN_STR(_MSC_FULL_VER)
    #else
    #define CYBN_COMPILER "unknown"
    #endif
    """
    bint CYBN_OPENMP_ENABLED
    const char* CYBN_BUILD_CFLAGS
    const char* CYBN_BUILD_LDFLAGS
    const char* CYBN_SIMD
    const char* CYBN_OPENMP_STATUS
    const char* CYBN_COMPILER
    int cybn_cpu_has_avx2() noexcept nogil
    int cybn_cpu_has_avx512() noexcept nogil
    int omp_get_max_threads() noexcept nogil
    int omp_get_thread_num() noexcept nogil
