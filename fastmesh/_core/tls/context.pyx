"""TLS contexts and connections for the compiled data path, on the OpenSSL that openssl.pyx bound.

A TlsServer is a listener's TLS: one SSL_CTX per certificate; the client's SNI picks one (exact names first,
then one-label wildcards, else the first certificate, or a refusal with strict_sni). ALPN picks our first
protocol the client offers. Session tickets are encrypted with keys derived from one instance-wide secret and
the current rotation period (set_ticket_secret(), the listener's ticket_rotation): every worker derives the same
keys at the same moment, so a ticket issued by one worker resumes on any other, and rotation needs no messages
between processes. A ticket stays valid for two periods at most (the key of the period before is still accepted
and renewed). With allow_identities, the verify callback refuses a client certificate whose URI SAN the
allow list (identity.pyx) does not allow, inside the handshake (reason `denied`).

Certificates change without a new object: rebuild() reads the same files again into a new one (TlsError when
OpenSSL refuses them), and adopt() moves its contexts into the running one. Every SSL object holds a reference
to the SSL_CTX it was made from, so connections open (or in their handshake) keep the old certificate while new
handshakes get the new one, and the object every Tls.owner points at stays alive and the same.

A TlsClient is a cluster's TLS origination: trust (a CA file or the system store), the name checked (a
configured server_name, else the endpoint's IP address), an optional client certificate (mTLS), ALPN, and per
endpoint the newest session for resumption.

The per-connection functions (tls_accept/tls_connect, tls_handshake, tls_recv, tls_send, tls_close_notify,
tls_free) work on a Tls struct embedded in the connection object and map OpenSSL's WANT_READ/WANT_WRITE onto the
reactor's edge-triggered readiness: a read or write that blocks reports EAGAIN like recv/send do, and the
struct says when the other direction's event must retry it. tls_recv fills the caller's buffer with as many
records as the socket has (it stops only at WANT_READ), so a short read proves the socket drained, as a short
recv does; tls_send writes until everything is taken or the socket is full. Read-ahead is on: OpenSSL takes
what the socket has in one recv instead of one per record header and body.
"""
from libc.stdint cimport uint64_t
from libc.stdlib cimport malloc, free
from libc.string cimport memcpy, memcmp, memset, strlen, strncpy
from libc.stdio cimport snprintf
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

from fastmesh._core.includes.system cimport errno, EAGAIN, ECONNRESET, strerror
from fastmesh._core.tls.openssl cimport *
from fastmesh._core.tls.names cimport ServerNames
from fastmesh._core.tls.identity cimport Identities
from fastmesh._core.stats cimport C_TLS_FAILED, C_TLS_HANDSHAKES, C_TLS_RESUMED, L_TLS_FAILED, bump

import logging
import os
import time

from fastmesh._core.stats import TLS_FAIL_REASONS
from fastmesh._core.tls import openssl as _openssl
from fastmesh.digests import sha256

log = logging.getLogger("fastmesh.tls")

cdef extern from "<time.h>" nogil:
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    enum:
        CLOCK_REALTIME
    int clock_gettime(int clk_id, timespec *tp)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    int getpeername(int fd, void *addr, socklen_t *len)

cdef extern from *:
    """
    #include <errno.h>
    static inline void fm_set_errno(int e) { errno = e; }
    """
    void set_errno "fm_set_errno"(int e) noexcept nogil

cdef FmOssl *lib = ossl_table()         # the bound OpenSSL functions

# The TF_* reasons by name, in TlsFail order (TF_NONE first): stats.pyx names the listener slots with them.
FAIL_REASONS = ("none", *TLS_FAIL_REASONS)
assert len(FAIL_REASONS) == TF_COUNT

VERSIONS = {"1.0": TLS1_VERSION, "1.1": TLS1_1_VERSION, "1.2": TLS1_2_VERSION, "1.3": TLS1_3_VERSION}
# Cipher, ciphersuite and group strings have no defaults here: they come from the config (config/schema.py holds
# the defaults, in one place).
LOG_EVERY = 1.0                 # seconds: at most one log line per failure reason and listener (or cluster)

cdef char DETAIL[320]           # the last failure's OpenSSL text, read by whoever logs it (single-threaded)
cdef int ERR_LIB_SSL = 20


class TlsError(ValueError):
    """A certificate, key or setting OpenSSL refused; the message says which and why."""


def _errors(what):
    """OpenSSL's error queue as text (and emptied), for a TlsError."""
    cdef char buf[256]
    cdef unsigned long code
    texts = []
    code = lib.ERR_get_error()
    while code:
        lib.ERR_error_string_n(code, buf, sizeof(buf))
        texts.append(buf.decode(errors="replace"))
        code = lib.ERR_get_error()
    return TlsError(f"{what}: {'; '.join(texts) or 'refused'}")


def _require():
    """Bind OpenSSL if this is the process's first TLS (openssl.load()); TlsError when there is none."""
    _openssl.load()
    if not lib.loaded:
        raise TlsError(f"TLS is not available: {_openssl.error}")


# ---- session ticket keys -----------------------------------------------------------------------------------
#
# The instance's master secret ratchets forward every SECRET_ROTATION seconds of wall-clock time, the same moment
# in every worker: secret(g + 1) = HMAC-SHA256(secret(g), "fastmesh ticket secret" | g + 1), and a generation older
# than the last four is wiped. A period's ticket key is derived from the generation its period starts in, so
# every worker still derives the same keys with no message between processes, and a memory dump no longer yields
# the keys of tickets issued more than three generations before (their secret is gone, and HMAC does not run
# backwards). A ticket key's name carries its period (8 bytes, then 8 derived ones): a refused ticket's log line
# says which period issued it.

# KEEP: generations held (one listener's previous period can start two generations back while another's next
# period starts in the next one).
cdef enum:
    KEEP = 4
cdef unsigned char SECRETS[KEEP][32]   # generations SECRET_GEN - KEEP + 1 .. SECRET_GEN (newest last)
cdef long SECRET_GEN = 0               # the newest generation held
cdef int SECRET_HELD = 0               # how many of SECRETS are valid (newest first): 0 to KEEP
cdef double SECRET_ROTATION = 86400.0  # seconds per generation
cdef bint SECRET_HANDED = False        # set by the supervisor's hand-over (not a local random one)


cdef double _wall() noexcept:
    """Unix time from CLOCK_REALTIME, the clock of Python's time.time(). (time() reads the coarse clock, up to a
    tick behind: right after a period boundary a worker would still derive the previous period's keys.)"""
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef void _ratchet_once(unsigned char *secret, long gen) noexcept:
    """secret(gen - 1) -> secret(gen), in place."""
    cdef unsigned char msg[30]
    cdef unsigned char out[32]
    cdef unsigned int n = 32
    cdef int i
    memcpy(msg, b"fastmesh ticket secret", 22)
    for i in range(8):
        msg[22 + i] = (gen >> (8 * i)) & 0xFF
    lib.HMAC(lib.EVP_sha256(), secret, 32, msg, 30, out, &n)
    memcpy(secret, out, 32)
    memset(out, 0, 32)


cdef void _advance(long gen) noexcept:
    """Ratchet the held secrets forward until `gen` is the newest, wiping what falls out of the window."""
    cdef int i
    while SECRET_GEN < gen and SECRET_HELD > 0:
        for i in range(KEEP - 1):
            memcpy(SECRETS[i], SECRETS[i + 1], 32)
        _ratchet_once(SECRETS[KEEP - 1], SECRET_GEN + 1)
        _set_gen(SECRET_GEN + 1, SECRET_HELD + 1 if SECRET_HELD < KEEP else KEEP)
    for i in range(KEEP - SECRET_HELD):
        memset(SECRETS[i], 0, 32)


cdef void _set_gen(long gen, int held) noexcept:
    global SECRET_GEN, SECRET_HELD
    SECRET_GEN = gen
    SECRET_HELD = held


cdef const unsigned char *_secret(long gen) noexcept:
    """The master secret of generation gen (ratcheting forward when it is newer), or NULL once it is wiped."""
    if gen > SECRET_GEN:
        _advance(gen)
    if SECRET_GEN - gen >= SECRET_HELD or gen > SECRET_GEN:
        return NULL
    return SECRETS[KEEP - 1 - (SECRET_GEN - gen)]


def set_ticket_secret(bytes secret, generation=None, double rotation=86400.0, bint handed=True):
    """The instance's ticket secret (32 bytes, the same in every worker: the supervisor hands it over an inherited
    memfd, never the environment) as of `generation` (default: the current one), ratcheting every `rotation`
    seconds. Each listener derives its keys from it and its rotation period."""
    global SECRET_ROTATION, SECRET_HANDED
    if len(secret) != 32:
        raise ValueError("the ticket secret is 32 bytes")
    if rotation < 1.0:
        raise ValueError("the ticket secret rotation is at least a second")
    SECRET_ROTATION = rotation
    SECRET_HANDED = handed
    memset(SECRETS, 0, sizeof(SECRETS))
    memcpy(SECRETS[KEEP - 1], PyBytes_AS_STRING(secret), 32)
    _set_gen(<long>(_wall() // rotation) if generation is None else <long>generation, 1)


def ticket_secret_state():
    """(rotation seconds, newest generation held, generations held, handed over by a supervisor), for tests and
    /tls."""
    return SECRET_ROTATION, SECRET_GEN, SECRET_HELD, bool(SECRET_HANDED)


def ratchet(bytes secret, long since, long until):
    """secret(until) from secret(since): what the supervisor hands a worker it starts (the same derivation)."""
    cdef unsigned char buf[32]
    cdef long g
    _require()
    if len(secret) != 32:
        raise ValueError("the ticket secret is 32 bytes")
    memcpy(buf, PyBytes_AS_STRING(secret), 32)
    for g in range(since + 1, until + 1):
        _ratchet_once(buf, g)
    out = buf[:32]
    memset(buf, 0, 32)
    return out


cdef void _derive(TicketKey *k, long epoch, long period) noexcept:
    cdef unsigned char msg[17]
    cdef unsigned char out[32]
    cdef unsigned int n = 32
    cdef int i
    cdef const unsigned char *secret = _secret(<long>((<double>epoch * period) // SECRET_ROTATION))
    if secret == NULL:                      # its generation is wiped: a key no ticket matches
        lib.RAND_bytes(<unsigned char *>k, sizeof(TicketKey))
        memset(k.name, 0xFF, 8)
        return
    for i in range(8):
        msg[i] = (epoch >> (8 * i)) & 0xFF
        msg[8 + i] = (period >> (8 * i)) & 0xFF
    for i in range(3):
        msg[16] = i
        lib.HMAC(lib.EVP_sha256(), secret, 32, msg, 17, out, &n)
        if i == 0:
            memcpy(k.name, msg, 8)          # the period, in clear: a refused ticket's log line names it
            memcpy(k.name + 8, out, 8)
        elif i == 1:
            memcpy(k.hmac, out, 32)
        else:
            memcpy(k.aes, out, 32)
    memset(out, 0, 32)


cdef void _refresh_keys(TlsServer srv) noexcept:
    cdef long period = <long>srv.ticket_rotation
    cdef long epoch = <long>(_wall() // period)
    cdef int i
    if epoch == srv.key_epoch:
        return
    for i in range(3):
        _derive(&srv.keys[i], epoch - 1 + i, period)
    srv.key_epoch = epoch


cdef long _name_epoch(const unsigned char *name) noexcept:
    cdef long e = 0
    cdef int i
    for i in range(8):
        e |= (<long>name[i]) << (8 * i)
    return e


def ticket_key_name(long epoch, long period):
    """The name of the ticket key this process derives for (epoch, period) (tests compare workers with it)."""
    cdef TicketKey k
    _require()
    _derive(&k, epoch, period)
    return k.name[:16]


cdef void _refused_ticket(TlsServer srv, const unsigned char *name) noexcept:
    """Say (at debug level) which period issued a ticket no key here decrypts: too old, from another instance, or
    (when its period is one this worker accepts) a clock disagreement."""
    try:
        if log.isEnabledFor(logging.DEBUG):
            log.debug("session ticket refused (a full handshake follows): its key is from period %d, this worker "
                      "accepts periods %d to %d (%gs each)", _name_epoch(name), srv.key_epoch - 1,
                      srv.key_epoch + 1, srv.ticket_rotation)
    except BaseException:
        pass


cdef int _ticket_cb(SSL *s, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *ectx, HMAC_CTX *hctx,
                    int enc) noexcept:
    cdef int i
    cdef TicketKey *k
    cdef Tls *t = <Tls *>lib.SSL_get_ex_data(s, 0)
    cdef TlsServer srv
    if t == NULL or t.owner == NULL:
        return 0                            # no listener to ask: no ticket, or a full handshake
    srv = <TlsServer>t.owner
    _refresh_keys(srv)
    if enc:
        k = &srv.keys[1]
        memcpy(name, k.name, 16)
        if lib.RAND_bytes(iv, 16) != 1:
            return -1
        if lib.EVP_EncryptInit_ex(ectx, lib.EVP_aes_256_cbc(), NULL, k.aes, iv) != 1:
            return -1
        if lib.HMAC_Init_ex(hctx, k.hmac, 32, lib.EVP_sha256(), NULL) != 1:
            return -1
        return 1
    for i in range(3):
        k = &srv.keys[i]
        if memcmp(name, k.name, 16) == 0:
            if lib.HMAC_Init_ex(hctx, k.hmac, 32, lib.EVP_sha256(), NULL) != 1:
                return -1
            if lib.EVP_DecryptInit_ex(ectx, lib.EVP_aes_256_cbc(), NULL, k.aes, iv) != 1:
                return -1
            return 1 if i == 1 else 2       # 2: good, but issue a ticket under the current key
    _refused_ticket(srv, name)
    return 0                                # unknown key: a full handshake


# ---- certificates ------------------------------------------------------------------------------------------

cdef list _san(X509 *x, int kind):
    """The subjectAltName entries of one kind (GEN_DNS, GEN_URI) as str."""
    cdef OPENSSL_STACK *names = <OPENSSL_STACK *>lib.X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL)
    cdef FM_GENERAL_NAME *g
    cdef int i
    out = []
    if names == NULL:
        return out
    for i in range(lib.OPENSSL_sk_num(names)):
        g = <FM_GENERAL_NAME *>lib.OPENSSL_sk_value(names, i)
        if g.type == kind and g.str != NULL:
            out.append((<const char *>lib.ASN1_STRING_get0_data(g.str))[:lib.ASN1_STRING_length(g.str)]
                       .decode("ascii", "replace"))
    lib.GENERAL_NAMES_free(names)
    return out


cdef Py_ssize_t _first_uri(X509 *x, char *out, Py_ssize_t cap) noexcept:
    """The certificate's first URI SAN (a SPIFFE ID) copied into out; its length, 0 when none (or too long)."""
    cdef OPENSSL_STACK *names = <OPENSSL_STACK *>lib.X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL)
    cdef FM_GENERAL_NAME *g
    cdef int i, n
    cdef Py_ssize_t got = 0
    if names == NULL:
        return 0
    for i in range(lib.OPENSSL_sk_num(names)):
        g = <FM_GENERAL_NAME *>lib.OPENSSL_sk_value(names, i)
        if g.type == GEN_URI and g.str != NULL:
            n = lib.ASN1_STRING_length(g.str)
            if 0 < n <= cap:
                memcpy(out, lib.ASN1_STRING_get0_data(g.str), n)
                got = n
            break
    lib.GENERAL_NAMES_free(names)
    return got


cdef double _not_after(X509 *x):
    """The certificate's notAfter as Unix time."""
    cdef int days = 0, secs = 0
    if lib.ASN1_TIME_diff(&days, &secs, NULL, lib.X509_get0_notAfter(x)) != 1:
        return 0.0
    return time.time() + days * 86400.0 + secs


def _digest(*parts):
    """A digest of settings and the bytes of the files they name ("file:PATH", also inside lists and tuples):
    equal digests, equal contexts."""
    h = sha256()
    _feed(h, parts)
    return h.hexdigest()


def _feed(h, parts):
    for part in parts:
        if isinstance(part, (list, tuple)):
            h.update(b"(")
            _feed(h, part)
            h.update(b")")
        elif isinstance(part, str) and part.startswith("file:"):
            try:
                with open(part[5:], "rb") as f:
                    h.update(f.read())
            except OSError as exc:
                h.update(repr(exc).encode())
        else:
            h.update(repr(part).encode())
        h.update(b"\0")


def _alpn_wire(protocols):
    out = b""
    for p in protocols:
        b = p.encode("ascii")
        if not 0 < len(b) < 256:
            raise TlsError(f"ALPN protocol {p!r}: 1 to 255 bytes")
        out += bytes([len(b)]) + b
    return out


cdef void _common(SSL_CTX *ctx, str min_version, str ciphers, str ciphersuites, str groups) except *:
    lib.SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION)
    lib.SSL_CTX_ctrl(ctx, SSL_CTRL_MODE, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER
                     | SSL_MODE_RELEASE_BUFFERS, NULL)
    lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_READ_AHEAD, 1, NULL)
    if min_version not in VERSIONS:
        raise TlsError(f"min_version {min_version!r}: one of {', '.join(VERSIONS)}")
    if lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_MIN_PROTO_VERSION, VERSIONS[min_version], NULL) != 1:
        raise _errors(f"min_version {min_version}")
    if lib.SSL_CTX_set_cipher_list(ctx, ciphers.encode()) != 1:
        raise _errors(f"ciphers {ciphers!r}")
    if lib.SSL_CTX_set_ciphersuites(ctx, ciphersuites.encode()) != 1:
        raise _errors(f"ciphersuites {ciphersuites!r}")
    cdef bytes group_list = groups.encode()
    if lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_GROUPS_LIST, 0, <void *><char *>group_list) != 1:
        raise _errors(f"groups {groups!r}")


cdef void _use_cert(SSL_CTX *ctx, str cert, str key) except *:
    if lib.SSL_CTX_use_certificate_chain_file(ctx, os.fsencode(cert)) != 1:
        raise _errors(f"certificate {cert}")
    if lib.SSL_CTX_use_PrivateKey_file(ctx, os.fsencode(key), SSL_FILETYPE_PEM) != 1:
        raise _errors(f"key {key} (for certificate {cert})")
    if lib.SSL_CTX_check_private_key(ctx) != 1:
        raise _errors(f"key {key} does not match certificate {cert}")


cdef dict _cert_info(SSL_CTX *ctx, str path):
    cdef X509 *x = lib.SSL_CTX_get0_certificate(ctx)
    if x == NULL:
        return {"cert": path, "names": [], "uris": [], "not_after": 0.0}
    return {"cert": path, "names": _san(x, GEN_DNS), "uris": _san(x, GEN_URI), "not_after": _not_after(x)}


# ---- callbacks -----------------------------------------------------------------------------------------------

cdef int _sni_cb(SSL *s, int *alert, void *arg) noexcept:
    cdef TlsServer srv = <TlsServer>arg
    cdef const char *name = lib.SSL_get_servername(s, TLSEXT_NAMETYPE_host_name)
    cdef int i
    cdef Tls *t
    if name == NULL:
        return SSL_TLSEXT_ERR_OK
    i = srv.names.find(name, strlen(name))
    if i < 0:
        if srv.strict_sni:
            t = <Tls *>lib.SSL_get_ex_data(s, 0)
            if t != NULL:
                t.sni_unknown = 1
            alert[0] = SSL_AD_UNRECOGNIZED_NAME
            return SSL_TLSEXT_ERR_ALERT_FATAL
        return SSL_TLSEXT_ERR_OK
    if i > 0:
        lib.SSL_set_SSL_CTX(s, srv.ctxs[i])
    return SSL_TLSEXT_ERR_OK


cdef int _alpn_cb(SSL *s, const unsigned char **out, unsigned char *outlen, const unsigned char *inp,
                  unsigned int inlen, void *arg) noexcept:
    cdef TlsServer srv = <TlsServer>arg
    cdef bytes ours = srv.alpn
    if lib.SSL_select_next_proto(<unsigned char **>out, outlen, <const unsigned char *>PyBytes_AS_STRING(ours),
                                 <unsigned int>PyBytes_GET_SIZE(ours), inp, inlen) != OPENSSL_NPN_NEGOTIATED:
        return SSL_TLSEXT_ERR_NOACK         # nothing in common: go on without ALPN (as nginx and HAProxy do)
    return SSL_TLSEXT_ERR_OK


cdef int _new_session_cb(SSL *s, SSL_SESSION *sess) noexcept:
    cdef Tls *t = <Tls *>lib.SSL_get_ex_data(s, 0)
    cdef TlsClient cli
    if t == NULL or t.owner == NULL:
        return 0
    cli = <TlsClient>t.owner
    if not (0 <= t.endpoint < cli.nsessions):
        return 0
    if cli.sessions[t.endpoint] != NULL:
        lib.SSL_SESSION_free(cli.sessions[t.endpoint])
    cli.sessions[t.endpoint] = sess
    return 1                                 # we keep the reference


cdef int _verify_cb(int ok, X509_STORE_CTX *store) noexcept:
    """A listener with allow_identities: once the client's chain verified, its leaf's URI SAN must be allowed."""
    cdef SSL *s
    cdef Tls *t
    cdef TlsServer srv
    cdef char identity[1024]
    cdef Py_ssize_t n
    if not ok or lib.X509_STORE_CTX_get_error_depth(store) != 0:
        return ok
    s = <SSL *>lib.X509_STORE_CTX_get_ex_data(store, lib.SSL_get_ex_data_X509_STORE_CTX_idx())
    t = <Tls *>lib.SSL_get_ex_data(s, 0) if s != NULL else NULL
    if t == NULL or t.owner == NULL:
        return ok
    srv = <TlsServer>t.owner
    if srv.identities is None:
        return ok
    n = _first_uri(lib.X509_STORE_CTX_get_current_cert(store), identity, sizeof(identity) - 1)
    if srv.identities.allows(identity, n):
        return 1
    t.denied = 1
    if n:
        identity[n] = 0
        snprintf(DETAIL, sizeof(DETAIL), "identity %.240s is not in allow_identities", identity)
    else:
        strncpy(DETAIL, "the client certificate has no URI SAN (no identity) and allow_identities is set",
                sizeof(DETAIL) - 1)
    lib.X509_STORE_CTX_set_error(store, X509_V_ERR_APPLICATION_VERIFICATION)
    return 0


# ---- contexts ------------------------------------------------------------------------------------------------

cdef class TlsServer:
    """A listener's TLS. `certs`: [(cert_path, key_path, names)], names None for the certificate's DNS SANs;
    the first certificate is the default. `allow_identities`: URI SANs a client certificate must carry (exact, or
    "prefix/*"; identity.pyx), None for any. Raises TlsError for a file or setting OpenSSL refuses."""

    def __cinit__(self, list certs, *, str ciphers, str ciphersuites, str groups, str client_ca=None,
                  bint require_client_cert=False, alpn=(), str min_version="1.2", bint tickets=True,
                  double ticket_rotation=43200.0, bint strict_sni=False, double handshake_timeout=10.0,
                  allow_identities=None):
        cdef SSL_CTX *ctx
        cdef bytes sid
        cdef void *ca_names
        cdef int i
        _require()
        if not certs:
            raise TlsError("at least one certificate")
        self.args = (certs,)
        self.kwargs = dict(ciphers=ciphers, ciphersuites=ciphersuites, groups=groups, client_ca=client_ca,
                           require_client_cert=require_client_cert, alpn=tuple(alpn), min_version=min_version,
                           tickets=tickets, ticket_rotation=ticket_rotation, strict_sni=strict_sni,
                           handshake_timeout=handshake_timeout, allow_identities=allow_identities)
        self.files = [p for c, k, _ in certs for p in (c, k)] + ([client_ca] if client_ca else [])
        self.ticket_rotation = max(ticket_rotation, 1.0)
        self.key_epoch = -1
        self.identities = Identities(allow_identities) if allow_identities is not None else None
        if allow_identities is not None and client_ca is None:
            raise TlsError("allow_identities needs client_ca (the CAs client certificates are checked against)")
        self.nctx = 0
        self.ctxs = <SSL_CTX **>malloc(sizeof(SSL_CTX *) * len(certs))
        if self.ctxs == NULL:
            raise MemoryError()
        self.strict_sni = strict_sni
        self.handshake_timeout = handshake_timeout
        self.verify_clients = client_ca is not None
        self.alpn = _alpn_wire(alpn)
        self.spec = _digest([(f"file:{c}", f"file:{k}", n) for c, k, n in certs], f"file:{client_ca}"
                            if client_ca else None, require_client_cert, tuple(alpn), min_version, ciphers,
                            ciphersuites, groups, tickets, ticket_rotation, strict_sni, handshake_timeout,
                            tuple(allow_identities or ()))
        sid = bytes.fromhex(self.spec)[:32]
        self.certificates = []
        served = []
        for cert, key, names in certs:
            ctx = lib.SSL_CTX_new(lib.TLS_server_method())
            if ctx == NULL:
                raise _errors("SSL_CTX_new")
            self.ctxs[self.nctx] = ctx
            self.nctx += 1
            _common(ctx, min_version, ciphers, ciphersuites, groups)
            lib.SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | (0 if tickets else SSL_OP_NO_TICKET))
            # Resumption is by tickets only: a per-worker session cache would miss whenever another worker accepts.
            lib.SSL_CTX_ctrl(ctx, SSL_CTRL_SET_SESS_CACHE_MODE, SSL_SESS_CACHE_OFF, NULL)
            lib.SSL_CTX_set_session_id_context(ctx, <const unsigned char *>PyBytes_AS_STRING(sid), 32)
            if tickets:
                lib.SSL_CTX_callback_ctrl(ctx, SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB, <fm_void_fn>_ticket_cb)
            _use_cert(ctx, cert, key)
            if client_ca is not None:
                if lib.SSL_CTX_load_verify_locations(ctx, os.fsencode(client_ca), NULL) != 1:
                    raise _errors(f"client_ca {client_ca}")
                ca_names = lib.SSL_load_client_CA_file(os.fsencode(client_ca))
                if ca_names != NULL:
                    lib.SSL_CTX_set_client_CA_list(ctx, ca_names)
                lib.SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | (SSL_VERIFY_FAIL_IF_NO_PEER_CERT
                                                               if require_client_cert else 0),
                                       <void *>_verify_cb if self.identities is not None else NULL)
            if self.alpn:
                lib.SSL_CTX_set_alpn_select_cb(ctx, _alpn_cb, <void *>self)
            info = _cert_info(ctx, cert)
            if names is not None:
                info["names"] = list(names)
            self.certificates.append(info)
            served.extend((n, self.nctx - 1) for n in info["names"])
        lib.SSL_CTX_callback_ctrl(self.ctxs[0], SSL_CTRL_SET_TLSEXT_SERVERNAME_CB, <fm_void_fn>_sni_cb)
        lib.SSL_CTX_ctrl(self.ctxs[0], SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG, 0, <void *>self)
        self.names = ServerNames(served)
        for i in range(TF_COUNT):
            self.log_after[i] = 0.0
            self.log_held[i] = 0

    def __dealloc__(self):
        cdef int i
        if self.ctxs != NULL:
            for i in range(self.nctx):
                lib.SSL_CTX_free(self.ctxs[i])
            free(self.ctxs)
            self.ctxs = NULL

    def rebuild(self):
        """A new TlsServer from the same settings, the files read again (TlsError when OpenSSL refuses them)."""
        return TlsServer(*self.args, **self.kwargs)

    def adopt(self, TlsServer new):
        """From now on, handshakes get `new`'s certificates and settings (a rebuild()); connections already open or
        in their handshake keep what they have. `new` is left holding the old contexts: drop it."""
        cdef SSL_CTX **ctxs = self.ctxs
        cdef int nctx = self.nctx
        cdef int i
        self.ctxs, self.nctx = new.ctxs, new.nctx
        new.ctxs, new.nctx = ctxs, nctx
        self.names, new.names = new.names, self.names
        self.alpn, self.strict_sni, self.handshake_timeout = new.alpn, new.strict_sni, new.handshake_timeout
        self.verify_clients, self.identities = new.verify_clients, new.identities
        self.certificates, self.spec, self.files = new.certificates, new.spec, new.files
        self.args, self.kwargs = new.args, new.kwargs
        if self.ticket_rotation != new.ticket_rotation:
            self.ticket_rotation = new.ticket_rotation
            self.key_epoch = -1
        # The callbacks of the new contexts were given their builder as argument: give them this object instead.
        lib.SSL_CTX_ctrl(self.ctxs[0], SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG, 0, <void *>self)
        if self.alpn:
            for i in range(self.nctx):
                lib.SSL_CTX_set_alpn_select_cb(self.ctxs[i], _alpn_cb, <void *>self)

    @property
    def alpn_protocols(self):
        """The protocols offered to clients, our preference first."""
        out, b, i = [], self.alpn, 0
        while i < len(b):
            out.append(b[i + 1:i + 1 + b[i]].decode())
            i += 1 + b[i]
        return out

    def certificate_for(self, str server_name):
        """Which certificate (index into `certificates`) a client asking for server_name gets; -1: refused."""
        cdef int i = self.names.lookup(server_name)
        return 0 if i < 0 and not self.strict_sni else i

    cdef void failed(self, Tls *t, uint64_t *counters, str listener, int fd, double now) noexcept:
        """Count a failed handshake (t.fail) in the listener's slots; log it, at most once a second per reason."""
        cdef int r = t.fail if 0 < t.fail < TF_COUNT else TF_OTHER
        bump(counters + L_TLS_FAILED + r - 1, 1)
        if now < self.log_after[r]:
            self.log_held[r] += 1
            return
        held = self.log_held[r]
        self.log_held[r] = 0
        self.log_after[r] = now + LOG_EVERY
        try:
            log.warning("listener %s: TLS handshake from %s refused: %s (%s)%s", listener, _peer(fd),
                        FAIL_REASONS[r], _why(r, self.handshake_timeout),
                        f"; {held} more like it since the last line" if held else "")
        except BaseException:
            pass


cdef class TlsClient:
    """A cluster's TLS origination. `ca`: a PEM bundle (None: the system store); `server_name`: SNI and the name
    verified (None: the endpoint's IP address is verified, and no SNI is sent); `cert`/`key`: a client
    certificate; `verify=False` turns verification off (say so in the config, never by default)."""

    def __cinit__(self, *, str ciphers, str ciphersuites, str groups, str ca=None, str server_name=None,
                  str cert=None, str key=None, alpn=(), str min_version="1.2", bint verify=True, int endpoints=0,
                  bint sessions=True):
        cdef bytes wire
        _require()
        self.args = ()
        self.kwargs = dict(ciphers=ciphers, ciphersuites=ciphersuites, groups=groups, ca=ca, server_name=server_name,
                           cert=cert, key=key, alpn=tuple(alpn), min_version=min_version, verify=verify,
                           endpoints=endpoints, sessions=sessions)
        self.files = [p for p in (ca, cert, key or cert) if p]
        self.ctx = lib.SSL_CTX_new(lib.TLS_client_method())
        if self.ctx == NULL:
            raise _errors("SSL_CTX_new")
        self.spec = _digest(f"file:{ca}" if ca else None, server_name, f"file:{cert}" if cert else None,
                            f"file:{key}" if key else None, tuple(alpn), min_version, ciphers, ciphersuites, groups,
                            verify, sessions)
        _common(self.ctx, min_version, ciphers, ciphersuites, groups)
        self.verify = verify
        self.server_name = (server_name or "").encode("idna" if server_name and not server_name.isascii()
                                                      else "ascii")
        self.certificates = []
        if verify:
            if ca is not None:
                if lib.SSL_CTX_load_verify_locations(self.ctx, os.fsencode(ca), NULL) != 1:
                    raise _errors(f"ca {ca}")
            elif lib.SSL_CTX_set_default_verify_paths(self.ctx) != 1:
                raise _errors("the system trust store")
            lib.SSL_CTX_set_verify(self.ctx, SSL_VERIFY_PEER, NULL)
        else:
            lib.SSL_CTX_set_verify(self.ctx, SSL_VERIFY_NONE, NULL)
        if cert is not None:
            _use_cert(self.ctx, cert, key or cert)
            self.certificates.append(_cert_info(self.ctx, cert))
        wire = _alpn_wire(alpn)
        if wire and lib.SSL_CTX_set_alpn_protos(self.ctx, <const unsigned char *>PyBytes_AS_STRING(wire),
                                                <unsigned int>len(wire)) != 0:
            raise _errors("alpn")
        self.nsessions = max(endpoints, 0) if sessions else 0
        self.sessions = <SSL_SESSION **>malloc(sizeof(SSL_SESSION *) * (self.nsessions or 1))
        if self.sessions == NULL:
            raise MemoryError()
        memset(self.sessions, 0, sizeof(SSL_SESSION *) * (self.nsessions or 1))
        if self.nsessions:
            lib.SSL_CTX_ctrl(self.ctx, SSL_CTRL_SET_SESS_CACHE_MODE,
                             SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE, NULL)
            lib.SSL_CTX_sess_set_new_cb(self.ctx, _new_session_cb)

    def __dealloc__(self):
        cdef int i
        if self.sessions != NULL:
            for i in range(self.nsessions):
                if self.sessions[i] != NULL:
                    lib.SSL_SESSION_free(self.sessions[i])
            free(self.sessions)
            self.sessions = NULL
        if self.ctx != NULL:
            lib.SSL_CTX_free(self.ctx)
            self.ctx = NULL

    def rebuild(self):
        """A new TlsClient from the same settings, the files read again (TlsError when OpenSSL refuses them)."""
        return TlsClient(*self.args, **self.kwargs)

    def adopt(self, TlsClient new):
        """From now on, connections are made with `new`'s trust, client certificate and settings (a rebuild());
        the sessions kept for resumption are dropped (they carry the old client certificate). `new` is left
        holding the old context and sessions: drop it."""
        cdef SSL_CTX *ctx = self.ctx
        cdef SSL_SESSION **sessions = self.sessions
        cdef int nsessions = self.nsessions
        self.ctx, new.ctx = new.ctx, ctx
        self.sessions, self.nsessions = new.sessions, new.nsessions
        new.sessions, new.nsessions = sessions, nsessions
        self.server_name, self.verify = new.server_name, new.verify
        self.certificates, self.spec, self.files = new.certificates, new.spec, new.files
        self.args, self.kwargs = new.args, new.kwargs

    cdef void finished(self, Tls *t, uint64_t *counters) noexcept:
        """Count a finished upstream handshake (and a resumed session) here and in the cluster's slots, which the
        supervisor merges over the workers."""
        cdef bint resumed = tls_resumed(t)
        self.handshakes += 1
        bump(counters + C_TLS_HANDSHAKES, 1)
        if resumed:
            self.resumed += 1
            bump(counters + C_TLS_RESUMED, 1)

    cdef void failed(self, Tls *t, uint64_t *counters, str cluster, str endpoint, double now) noexcept:
        """Count a failed upstream handshake (here and in the cluster's slots) and log it, at most once a second."""
        self.failures += 1
        bump(counters + C_TLS_FAILED, 1)
        if now < self.log_after:
            return
        self.log_after = now + LOG_EVERY
        try:
            log.warning("cluster %s: TLS handshake with %s failed: %s (%s)", cluster, endpoint,
                        FAIL_REASONS[t.fail if 0 < t.fail < TF_COUNT else TF_OTHER], _why(t.fail, 0.0))
        except BaseException:
            pass


def detail():
    """The OpenSSL text of the last failure (for logs)."""
    return DETAIL[:strlen(DETAIL)].decode(errors="replace")


def _why(int reason, double timeout):
    if reason == TF_TIMEOUT:
        return f"no complete handshake within handshake_timeout ({timeout:g}s)" if timeout else \
            "no complete handshake within connect_timeout"
    return detail()


def _peer(int fd):
    import socket
    try:
        s = socket.socket(fileno=os.dup(fd))
    except OSError:
        return "?"
    try:
        host, port = s.getpeername()[:2]
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    except OSError:
        return "?"
    finally:
        s.close()


# ---- connections ---------------------------------------------------------------------------------------------

cdef int tls_accept(Tls *t, TlsServer srv, int fd) noexcept:
    """Make fd's server side TLS (the handshake starts at the first tls_handshake). -1: out of memory."""
    t.ssl = lib.SSL_new(srv.ctxs[0])
    if t.ssl == NULL:
        lib.ERR_clear_error()
        return -1
    lib.SSL_set_fd(t.ssl, fd)
    lib.SSL_set_accept_state(t.ssl)
    lib.SSL_set_ex_data(t.ssl, 0, t)
    t.state = TLS_HANDSHAKE
    t.read_wants_out = 0
    t.write_wants_in = 0
    t.more = 0
    t.fail = TF_NONE
    t.sni_unknown = 0
    t.denied = 0
    t.endpoint = -1
    t.owner = <void *>srv
    return 0


cdef int tls_connect(Tls *t, TlsClient cli, int fd, int endpoint, const char *ip) noexcept:
    """Make fd's client side TLS towards endpoint (ip: its address, verified when no server_name is set)."""
    t.ssl = lib.SSL_new(cli.ctx)
    if t.ssl == NULL:
        lib.ERR_clear_error()
        return -1
    lib.SSL_set_fd(t.ssl, fd)
    lib.SSL_set_connect_state(t.ssl)
    lib.SSL_set_ex_data(t.ssl, 0, t)
    t.state = TLS_HANDSHAKE
    t.read_wants_out = 0
    t.write_wants_in = 0
    t.more = 0
    t.fail = TF_NONE
    t.sni_unknown = 0
    t.denied = 0
    t.endpoint = endpoint
    t.owner = <void *>cli
    if PyBytes_GET_SIZE(cli.server_name):
        lib.SSL_ctrl(t.ssl, SSL_CTRL_SET_TLSEXT_HOSTNAME, TLSEXT_NAMETYPE_host_name,
                     <void *>PyBytes_AS_STRING(cli.server_name))
        if cli.verify:
            lib.SSL_set1_host(t.ssl, PyBytes_AS_STRING(cli.server_name))
    elif cli.verify and ip != NULL:
        lib.X509_VERIFY_PARAM_set1_ip_asc(lib.SSL_get0_param(t.ssl), ip)
    if 0 <= endpoint < cli.nsessions and cli.sessions[endpoint] != NULL:
        lib.SSL_set_session(t.ssl, cli.sessions[endpoint])
    lib.ERR_clear_error()
    return 0


cdef int _classify(Tls *t, int e) noexcept:
    """Why the handshake failed (a TlsFail), with OpenSSL's text in DETAIL; empties the error queue."""
    cdef unsigned long code = lib.ERR_get_error()
    cdef int err_lib, reason, err_no = errno
    cdef long vr
    cdef const char *vs
    cdef Py_ssize_t used
    if t.denied:                            # the verify callback wrote DETAIL
        lib.ERR_clear_error()
        return TF_DENIED
    DETAIL[0] = 0
    if t.sni_unknown:
        lib.ERR_clear_error()
        strncpy(DETAIL, "no certificate for the server name asked for", sizeof(DETAIL) - 1)
        return TF_UNKNOWN_SNI
    if code == 0:
        if err_no:
            strncpy(DETAIL, strerror(err_no), sizeof(DETAIL) - 1)
        else:
            strncpy(DETAIL, "connection closed", sizeof(DETAIL) - 1)
        return TF_CLOSED if e == SSL_ERROR_SYSCALL or e == SSL_ERROR_ZERO_RETURN else TF_OTHER
    lib.ERR_error_string_n(code, DETAIL, 256)
    lib.ERR_clear_error()
    if code & 0x80000000UL:                 # OpenSSL 3: a system error (errno) during the handshake
        return TF_CLOSED
    if _openssl.version_number >= 0x30000000:
        err_lib = (code >> 23) & 0xFF
        reason = code & 0x7FFFFF
    else:
        err_lib = (code >> 24) & 0xFF
        reason = code & 0xFFF
    if err_lib != ERR_LIB_SSL:
        return TF_OTHER
    if reason == 134:                       # certificate verify failed: say why
        vr = lib.SSL_get_verify_result(t.ssl)
        vs = lib.X509_verify_cert_error_string(vr)
        used = strlen(DETAIL)
        if vs != NULL and used + 3 < <Py_ssize_t>sizeof(DETAIL):
            DETAIL[used] = b':'
            DETAIL[used + 1] = b' '
            strncpy(DETAIL + used + 2, vs, sizeof(DETAIL) - used - 3)
            DETAIL[sizeof(DETAIL) - 1] = 0
        return TF_BAD_CERT
    if reason in (258, 259, 191, 373, 1070):    # unsupported protocol / version, inappropriate fallback
        return TF_VERSION
    if reason in (193, 410, 118):           # no shared cipher, group, signature algorithm
        return TF_CIPHER
    if reason in (199, 1116):               # peer did not return a certificate / certificate required
        return TF_NO_CLIENT_CERT
    if reason in (1112,):                   # the server said unrecognized_name
        return TF_UNKNOWN_SNI
    if reason in (156, 155, 267, 198, 252, 115, 159, 443, 245, 244, 160, 150):
        return TF_NOT_TLS                   # http request, wrong version number, bad length or record
    if reason == 294:                       # unexpected EOF
        return TF_CLOSED
    if 1000 <= reason < 1256:               # an alert from the peer
        return TF_PEER_REFUSED
    return TF_OTHER


cdef int tls_handshake(Tls *t) noexcept:
    """Advance the handshake: 1 done, 0 waiting for the socket (either direction), -1 failed (t.fail)."""
    cdef int r = lib.SSL_do_handshake(t.ssl)
    cdef int e
    if r == 1:
        t.state = TLS_OPEN
        return 1
    e = lib.SSL_get_error(t.ssl, r)
    if e == SSL_ERROR_WANT_READ or e == SSL_ERROR_WANT_WRITE:
        return 0
    t.fail = _classify(t, e)
    t.state = TLS_FAILED
    return -1


cdef Py_ssize_t tls_recv(Tls *t, char *buf, Py_ssize_t n) noexcept:
    """recv's contract over TLS: bytes read (as many records as the socket has, up to n), 0 at the peer's
    close_notify or EOF, -1 with errno EAGAIN when nothing is readable (read_wants_out set when OpenSSL waits
    for the socket to be writable), -1 with another errno on failure.

    Read-ahead may take a close_notify (or the records before an error) off the socket together with the data
    before it: then the data is returned, t.more is set, and the close comes at the next call. No readiness
    edge will announce it, so a caller must not take this short read as proof the socket drained
    (tls_drained())."""
    cdef Py_ssize_t total = 0
    cdef int r, e, chunk
    t.more = 0
    while total < n:
        chunk = <int>(n - total) if n - total < 0x40000000 else 0x40000000
        r = lib.SSL_read(t.ssl, buf + total, chunk)
        if r > 0:
            total += r
            continue
        e = lib.SSL_get_error(t.ssl, r)
        if e == SSL_ERROR_WANT_READ:
            t.read_wants_out = 0
            break
        if e == SSL_ERROR_WANT_WRITE:
            t.read_wants_out = 1
            break
        if total > 0:
            t.more = 1                      # the EOF or error repeats at the next call: the caller reads on
            return total
        if e == SSL_ERROR_ZERO_RETURN:
            return 0
        if e == SSL_ERROR_SYSCALL and lib.ERR_get_error() == 0:
            if errno == 0 or r == 0:
                return 0                    # EOF without close_notify: a close like any other for a relay
            return -1
        if _classify(t, e) == TF_CLOSED:    # OpenSSL 3 reports an EOF without close_notify as an error
            return 0
        t.state = TLS_FAILED
        set_errno(ECONNRESET)
        return -1
    if total > 0:
        return total
    set_errno(EAGAIN)
    return -1


cdef Py_ssize_t tls_send(Tls *t, const char *buf, Py_ssize_t n) noexcept:
    """send's contract over TLS: bytes taken (all of them unless the socket filled up), -1 with errno EAGAIN
    when none could be (write_wants_in set when OpenSSL waits for the socket to be readable), -1 on failure.
    A call after EAGAIN must offer the same bytes again (more may follow them)."""
    cdef Py_ssize_t total = 0
    cdef int r, e, chunk
    while total < n:
        chunk = <int>(n - total) if n - total < 0x40000000 else 0x40000000
        r = lib.SSL_write(t.ssl, buf + total, chunk)
        if r > 0:
            total += r
            continue
        e = lib.SSL_get_error(t.ssl, r)
        if e == SSL_ERROR_WANT_WRITE:
            t.write_wants_in = 0
            break
        if e == SSL_ERROR_WANT_READ:
            t.write_wants_in = 1
            break
        lib.ERR_clear_error()
        t.state = TLS_FAILED
        if total > 0:
            return total
        set_errno(ECONNRESET)
        return -1
    if total > 0:
        return total
    set_errno(EAGAIN)
    return -1


cdef void tls_close_notify(Tls *t) noexcept:
    """Send close_notify (our half of the connection is done); best effort, never blocks."""
    if t.ssl != NULL and t.state == TLS_OPEN:
        lib.SSL_shutdown(t.ssl)
        lib.ERR_clear_error()


cdef void tls_free(Tls *t) noexcept:
    if t.ssl != NULL:
        lib.SSL_free(t.ssl)
        t.ssl = NULL
    t.state = TLS_OFF


cdef Tls *tls_alloc() noexcept:
    """A zeroed Tls of its own, for a connection whose TLS is decided when it opens (HTTP codecs hold a pointer:
    NULL for cleartext, so a cleartext connection carries no Tls at all). NULL when out of memory."""
    cdef Tls *t = <Tls *>malloc(sizeof(Tls))
    if t != NULL:
        memset(t, 0, sizeof(Tls))
    return t


cdef void tls_release(Tls **t) noexcept:
    """Send close_notify when the session is open, free the SSL object and the Tls; *t becomes NULL."""
    if t[0] == NULL:
        return
    tls_close_notify(t[0])
    tls_free(t[0])
    free(t[0])
    t[0] = NULL


cdef void tls_move(Tls *dst, Tls *src) noexcept:
    """Hand a connection's TLS to another holder (an upgraded HTTP connection's relay): OpenSSL's callbacks find
    the struct through the SSL object, so it is pointed at the new place. src is left cleartext."""
    memcpy(dst, src, sizeof(Tls))
    if dst.ssl != NULL:
        lib.SSL_set_ex_data(dst.ssl, 0, dst)
    memset(src, 0, sizeof(Tls))


cdef bint tls_resumed(Tls *t) noexcept:
    return t.ssl != NULL and lib.SSL_session_reused(t.ssl) == 1


cdef int tls_alpn(Tls *t, const unsigned char **proto) noexcept:
    """The protocol ALPN chose for this connection (its length; 0: none). For the HTTP listener's codec choice."""
    cdef unsigned int n = 0
    proto[0] = NULL
    if t.ssl == NULL:
        return 0
    lib.SSL_get0_alpn_selected(t.ssl, proto, &n)
    return <int>n


cdef Py_ssize_t tls_peer_uri(Tls *t, char *out, Py_ssize_t cap) noexcept:
    """The verified peer certificate's first URI SAN (a SPIFFE ID) copied into out; its length, 0 when none."""
    cdef X509 *x
    cdef Py_ssize_t got
    if t.ssl == NULL or lib.SSL_get_verify_result(t.ssl) != 0:
        return 0
    x = lib.SSL_get1_peer_certificate(t.ssl)
    if x == NULL:
        return 0
    got = _first_uri(x, out, cap)
    lib.X509_free(x)
    return got


# An embedded Proxy's tickets are its own: a random secret until `fastmesh run`'s worker sets the instance's.
set_ticket_secret(os.urandom(32), handed=False)
