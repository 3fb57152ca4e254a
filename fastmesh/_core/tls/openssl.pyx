"""OpenSSL for the compiled data path, bound on first use to the libssl that Python's own `ssl` module loads.

Why not `#include <openssl/ssl.h>` and `-lssl`: `pip install .` must work on a machine that has gcc and the Python
headers but no OpenSSL development package, and Python's `ssl` objects cost a Python call per read and write,
which the data path cannot afford. So openssl.pxd declares the few functions we call ourselves (their public,
documented signatures; the macros among them are spelled as the SSL_CTX_ctrl/SSL_ctrl calls they expand to), and
this module fills a table of function pointers the first time TLS is asked for (load()): it imports `_ssl`
(which maps libssl and libcrypto into the process), finds their paths in /proc/self/maps, and resolves each name
with dlopen/dlsym on the very same library, so fastmesh and Python's `ssl` share one OpenSSL, its version, its
configuration and its system trust store. No header, no link-time library: the build needs neither. OpenSSL
1.1.1 and 3.x are supported (the functions and constants used have the same ABI in both); older versions are
refused with a clear error.

Not at import: OpenSSL's libraries and start-up cost about 1 MiB of private memory per process, which an instance
without a tls table never needs (the supervisor loads it before forking when the config has one, so that the
workers share it).
"""
from libc.string cimport memset

import os

cdef extern from "<dlfcn.h>" nogil:
    void *dlopen(const char *filename, int flags)
    void *dlsym(void *handle, const char *symbol)
    char *dlerror()
    enum:
        RTLD_NOW
        RTLD_LOCAL

cdef FmOssl OSSL
memset(&OSSL, 0, sizeof(OSSL))
cdef bint TRIED = False          # load() ran (whether it bound a library or not)

MIN_VERSION = 0x10101000        # OpenSSL 1.1.1
# Names that moved: OpenSSL 3 renamed SSL_get_peer_certificate (which 1.1.1 has).
_ALIASES = {"SSL_get1_peer_certificate": ("SSL_get1_peer_certificate", "SSL_get_peer_certificate")}

library_path = None             # the libssl file the table points into, once bound
version_number = 0              # OpenSSL_version_num() of that library
error = None                    # why TLS is unavailable, or None


cdef FmOssl *ossl_table() noexcept:
    return &OSSL


def _mapped_libssl():
    """The libssl file mapped into this process (after `import _ssl`), or None."""
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                parts = line.split(None, 5)
                if len(parts) == 6:
                    path = parts[5].strip()
                    if os.path.basename(path).startswith("libssl.so"):
                        return path
    except OSError:
        pass
    return None


def _candidates():
    import importlib
    try:
        importlib.import_module("_ssl")     # maps the libssl and libcrypto Python was built with
    except ImportError:
        pass
    found = _mapped_libssl()
    if found:
        yield found
    import ctypes.util
    name = ctypes.util.find_library("ssl")
    if name:
        yield name
    yield "libssl.so.3"
    yield "libssl.so.1.1"


cdef void *_resolve(void *handle, str name):
    return dlsym(handle, name.encode())


cdef str _bind(void *handle):
    cdef void **slots = (<void **>&OSSL) + 1     # `loaded` takes one pointer-sized slot (padding)
    cdef void *fn
    # The table's fields after `loaded` are the functions in openssl.pxd's order: fill them by that order.
    names = _FIELDS
    for i, name in enumerate(names):
        fn = NULL
        for alias in _ALIASES.get(name, (name,)):
            fn = _resolve(handle, alias)
            if fn != NULL:
                break
        if fn == NULL:
            return f"symbol {name} not found"
        slots[i] = fn
    return None


# The function fields of FmOssl, in declaration order (checked against the struct's size below); every one is
# needed: a library without one of them is not used.
_FIELDS = (
    "OpenSSL_version_num", "TLS_server_method", "TLS_client_method", "SSL_CTX_new", "SSL_CTX_free", "SSL_CTX_ctrl",
    "SSL_CTX_callback_ctrl", "SSL_CTX_set_options", "SSL_CTX_use_certificate_chain_file",
    "SSL_CTX_use_PrivateKey_file", "SSL_CTX_check_private_key", "SSL_CTX_set_cipher_list",
    "SSL_CTX_set_ciphersuites", "SSL_CTX_load_verify_locations", "SSL_CTX_set_default_verify_paths",
    "SSL_CTX_set_verify", "SSL_load_client_CA_file", "SSL_CTX_set_client_CA_list", "SSL_CTX_set_session_id_context",
    "SSL_CTX_set_alpn_select_cb", "SSL_CTX_set_alpn_protos", "SSL_CTX_sess_set_new_cb", "SSL_CTX_get0_certificate",
    "SSL_select_next_proto", "SSL_new", "SSL_free", "SSL_set_fd", "SSL_set_accept_state", "SSL_set_connect_state",
    "SSL_do_handshake", "SSL_read", "SSL_write", "SSL_get_error", "SSL_shutdown", "SSL_ctrl", "SSL_get_servername",
    "SSL_set_SSL_CTX", "SSL_get0_alpn_selected", "SSL_session_reused", "SSL_get_version", "SSL_get_verify_result",
    "SSL_get1_peer_certificate", "SSL_set1_host", "SSL_get0_param", "X509_VERIFY_PARAM_set1_ip_asc",
    "SSL_set_ex_data", "SSL_get_ex_data", "SSL_set_session", "SSL_SESSION_free", "SSL_SESSION_is_resumable",
    "ERR_get_error", "ERR_clear_error", "ERR_error_string_n", "X509_verify_cert_error_string", "X509_free",
    "X509_get_ext_d2i", "X509_get0_notAfter", "ASN1_TIME_diff", "OPENSSL_sk_num", "OPENSSL_sk_value",
    "GENERAL_NAMES_free", "ASN1_STRING_length", "ASN1_STRING_get0_data", "RAND_bytes", "EVP_aes_256_cbc",
    "EVP_sha256", "EVP_EncryptInit_ex", "EVP_DecryptInit_ex", "HMAC_Init_ex", "HMAC", "X509_STORE_CTX_get_ex_data",
    "SSL_get_ex_data_X509_STORE_CTX_idx", "X509_STORE_CTX_get_error_depth", "X509_STORE_CTX_get_current_cert",
    "X509_STORE_CTX_set_error",
)
assert sizeof(FmOssl) == sizeof(void *) * (len(_FIELDS) + 1), "openssl.pxd's table and _FIELDS disagree"


def load():
    """Bind the table (once: later calls return at once); afterwards available() says whether it worked and
    `error` why not."""
    global library_path, version_number, error, TRIED
    cdef void *handle
    cdef unsigned long v
    if TRIED:
        return
    TRIED = True
    problems = []
    for candidate in _candidates():
        handle = dlopen(os.fsencode(candidate), RTLD_NOW | RTLD_LOCAL)
        if handle == NULL:
            problems.append(f"{candidate}: {(dlerror() or b'cannot be opened').decode(errors='replace')}")
            continue
        why = _bind(handle)
        if why is not None:
            problems.append(f"{candidate}: {why}")
            memset(&OSSL, 0, sizeof(OSSL))
            continue
        v = OSSL.OpenSSL_version_num()
        if v < MIN_VERSION:
            problems.append(f"{candidate}: OpenSSL {v:#x} is older than 1.1.1")
            memset(&OSSL, 0, sizeof(OSSL))
            continue
        OSSL.loaded = 1
        library_path = candidate
        version_number = v
        error = None
        return
    error = "no usable libssl (" + "; ".join(problems) + ")" if problems else "no libssl found"


def available():
    """True when TLS can be used: a libssl of version 1.1.1 or later was bound (binding it now if need be)."""
    load()
    return OSSL.loaded == 1


def version():
    """(major, minor, patch) of the bound OpenSSL, or None."""
    load()
    if not OSSL.loaded:
        return None
    v = version_number
    return ((v >> 28) & 0xF, (v >> 20) & 0xFF, (v >> 4) & 0xFF) if v >= 0x30000000 else \
        ((v >> 28) & 0xF, (v >> 20) & 0xFF, (v >> 12) & 0xFF)
