# OpenSSL as the data path sees it: opaque types, the constants we use, and a table of function pointers that
# openssl.pyx fills at import from the libssl Python's own ssl module loaded (no OpenSSL header, no link-time libssl).

from libc.stdint cimport uint64_t

cdef extern from *:
    """
    /* Our own declarations of the OpenSSL 1.1.1 / 3.x ABI we call: opaque handles and function pointer types.
       Only the names and signatures of documented public functions; nothing here comes from OpenSSL's headers. */
    typedef struct ssl_st SSL;
    typedef struct ssl_ctx_st SSL_CTX;
    typedef struct ssl_method_st SSL_METHOD;
    typedef struct ssl_session_st SSL_SESSION;
    typedef struct x509_st X509;
    typedef struct asn1_string_st ASN1_STRING;
    typedef struct evp_cipher_st EVP_CIPHER;
    typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
    typedef struct evp_md_st EVP_MD;
    typedef struct hmac_ctx_st HMAC_CTX;
    typedef struct X509_VERIFY_PARAM_st X509_VERIFY_PARAM;
    typedef struct stack_st OPENSSL_STACK;
    typedef struct x509_store_ctx_st X509_STORE_CTX;
    /* GENERAL_NAME is a public struct: a type, then a pointer (for DNS and URI names an ASN1_STRING). */
    typedef struct { int type; ASN1_STRING *str; } FM_GENERAL_NAME;

    typedef int (*fm_servername_cb)(SSL *s, int *alert, void *arg);
    typedef int (*fm_alpn_cb)(SSL *s, const unsigned char **out, unsigned char *outlen,
                              const unsigned char *in, unsigned int inlen, void *arg);
    typedef int (*fm_ticket_cb)(SSL *s, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *ectx,
                                HMAC_CTX *hctx, int enc);
    typedef int (*fm_new_session_cb)(SSL *s, SSL_SESSION *sess);
    typedef void (*fm_void_fn)(void);

    typedef struct {
        int loaded;
        unsigned long (*OpenSSL_version_num)(void);
        const SSL_METHOD *(*TLS_server_method)(void);
        const SSL_METHOD *(*TLS_client_method)(void);
        SSL_CTX *(*SSL_CTX_new)(const SSL_METHOD *m);
        void (*SSL_CTX_free)(SSL_CTX *c);
        long (*SSL_CTX_ctrl)(SSL_CTX *c, int cmd, long larg, void *parg);
        long (*SSL_CTX_callback_ctrl)(SSL_CTX *c, int cmd, fm_void_fn fp);
        uint64_t (*SSL_CTX_set_options)(SSL_CTX *c, uint64_t op);
        int (*SSL_CTX_use_certificate_chain_file)(SSL_CTX *c, const char *path);
        int (*SSL_CTX_use_PrivateKey_file)(SSL_CTX *c, const char *path, int type);
        int (*SSL_CTX_check_private_key)(const SSL_CTX *c);
        int (*SSL_CTX_set_cipher_list)(SSL_CTX *c, const char *s);
        int (*SSL_CTX_set_ciphersuites)(SSL_CTX *c, const char *s);
        int (*SSL_CTX_load_verify_locations)(SSL_CTX *c, const char *file, const char *dir);
        int (*SSL_CTX_set_default_verify_paths)(SSL_CTX *c);
        void (*SSL_CTX_set_verify)(SSL_CTX *c, int mode, void *cb);
        void *(*SSL_load_client_CA_file)(const char *path);
        void (*SSL_CTX_set_client_CA_list)(SSL_CTX *c, void *names);
        int (*SSL_CTX_set_session_id_context)(SSL_CTX *c, const unsigned char *id, unsigned int len);
        void (*SSL_CTX_set_alpn_select_cb)(SSL_CTX *c, fm_alpn_cb cb, void *arg);
        int (*SSL_CTX_set_alpn_protos)(SSL_CTX *c, const unsigned char *protos, unsigned int len);
        void (*SSL_CTX_sess_set_new_cb)(SSL_CTX *c, fm_new_session_cb cb);
        X509 *(*SSL_CTX_get0_certificate)(const SSL_CTX *c);
        int (*SSL_select_next_proto)(unsigned char **out, unsigned char *outlen, const unsigned char *server,
                                     unsigned int server_len, const unsigned char *client, unsigned int client_len);
        SSL *(*SSL_new)(SSL_CTX *c);
        void (*SSL_free)(SSL *s);
        int (*SSL_set_fd)(SSL *s, int fd);
        void (*SSL_set_accept_state)(SSL *s);
        void (*SSL_set_connect_state)(SSL *s);
        int (*SSL_do_handshake)(SSL *s);
        int (*SSL_read)(SSL *s, void *buf, int n);
        int (*SSL_write)(SSL *s, const void *buf, int n);
        int (*SSL_get_error)(const SSL *s, int ret);
        int (*SSL_shutdown)(SSL *s);
        long (*SSL_ctrl)(SSL *s, int cmd, long larg, void *parg);
        const char *(*SSL_get_servername)(const SSL *s, int type);
        SSL_CTX *(*SSL_set_SSL_CTX)(SSL *s, SSL_CTX *c);
        void (*SSL_get0_alpn_selected)(const SSL *s, const unsigned char **data, unsigned int *len);
        int (*SSL_session_reused)(const SSL *s);
        const char *(*SSL_get_version)(const SSL *s);
        long (*SSL_get_verify_result)(const SSL *s);
        X509 *(*SSL_get1_peer_certificate)(const SSL *s);
        int (*SSL_set1_host)(SSL *s, const char *host);
        X509_VERIFY_PARAM *(*SSL_get0_param)(SSL *s);
        int (*X509_VERIFY_PARAM_set1_ip_asc)(X509_VERIFY_PARAM *p, const char *ip);
        int (*SSL_set_ex_data)(SSL *s, int idx, void *data);
        void *(*SSL_get_ex_data)(const SSL *s, int idx);
        int (*SSL_set_session)(SSL *s, SSL_SESSION *sess);
        void (*SSL_SESSION_free)(SSL_SESSION *sess);
        int (*SSL_SESSION_is_resumable)(const SSL_SESSION *sess);
        unsigned long (*ERR_get_error)(void);
        void (*ERR_clear_error)(void);
        void (*ERR_error_string_n)(unsigned long e, char *buf, size_t len);
        const char *(*X509_verify_cert_error_string)(long n);
        void (*X509_free)(X509 *x);
        void *(*X509_get_ext_d2i)(const X509 *x, int nid, int *crit, int *idx);
        const ASN1_STRING *(*X509_get0_notAfter)(const X509 *x);
        int (*ASN1_TIME_diff)(int *days, int *secs, const ASN1_STRING *from, const ASN1_STRING *to);
        int (*OPENSSL_sk_num)(const OPENSSL_STACK *sk);
        void *(*OPENSSL_sk_value)(const OPENSSL_STACK *sk, int i);
        void (*GENERAL_NAMES_free)(void *names);
        int (*ASN1_STRING_length)(const ASN1_STRING *s);
        const unsigned char *(*ASN1_STRING_get0_data)(const ASN1_STRING *s);
        int (*RAND_bytes)(unsigned char *buf, int n);
        const EVP_CIPHER *(*EVP_aes_256_cbc)(void);
        const EVP_MD *(*EVP_sha256)(void);
        int (*EVP_EncryptInit_ex)(EVP_CIPHER_CTX *c, const EVP_CIPHER *t, void *engine, const unsigned char *key,
                                  const unsigned char *iv);
        int (*EVP_DecryptInit_ex)(EVP_CIPHER_CTX *c, const EVP_CIPHER *t, void *engine, const unsigned char *key,
                                  const unsigned char *iv);
        int (*HMAC_Init_ex)(HMAC_CTX *c, const void *key, int len, const EVP_MD *md, void *engine);
        unsigned char *(*HMAC)(const EVP_MD *md, const void *key, int key_len, const unsigned char *d, size_t n,
                               unsigned char *out, unsigned int *out_len);
        void *(*X509_STORE_CTX_get_ex_data)(const X509_STORE_CTX *c, int idx);
        int (*SSL_get_ex_data_X509_STORE_CTX_idx)(void);
        int (*X509_STORE_CTX_get_error_depth)(const X509_STORE_CTX *c);
        X509 *(*X509_STORE_CTX_get_current_cert)(const X509_STORE_CTX *c);
        void (*X509_STORE_CTX_set_error)(X509_STORE_CTX *c, int err);
    } FmOssl;
    """
    ctypedef struct SSL
    ctypedef struct SSL_CTX
    ctypedef struct SSL_METHOD
    ctypedef struct SSL_SESSION
    ctypedef struct X509
    ctypedef struct ASN1_STRING
    ctypedef struct EVP_CIPHER
    ctypedef struct EVP_CIPHER_CTX
    ctypedef struct EVP_MD
    ctypedef struct HMAC_CTX
    ctypedef struct X509_VERIFY_PARAM
    ctypedef struct OPENSSL_STACK
    ctypedef struct X509_STORE_CTX
    ctypedef struct FM_GENERAL_NAME:
        int type
        ASN1_STRING *str
    ctypedef int (*fm_servername_cb)(SSL *s, int *alert, void *arg) noexcept
    ctypedef int (*fm_alpn_cb)(SSL *s, const unsigned char **out, unsigned char *outlen,
                               const unsigned char *inp, unsigned int inlen, void *arg) noexcept
    ctypedef int (*fm_ticket_cb)(SSL *s, unsigned char *name, unsigned char *iv, EVP_CIPHER_CTX *ectx,
                                 HMAC_CTX *hctx, int enc) noexcept
    ctypedef int (*fm_new_session_cb)(SSL *s, SSL_SESSION *sess) noexcept
    ctypedef void (*fm_void_fn)() noexcept

    ctypedef struct FmOssl:
        int loaded
        unsigned long (*OpenSSL_version_num)() noexcept nogil
        const SSL_METHOD *(*TLS_server_method)() noexcept nogil
        const SSL_METHOD *(*TLS_client_method)() noexcept nogil
        SSL_CTX *(*SSL_CTX_new)(const SSL_METHOD *m) noexcept nogil
        void (*SSL_CTX_free)(SSL_CTX *c) noexcept nogil
        long (*SSL_CTX_ctrl)(SSL_CTX *c, int cmd, long larg, void *parg) noexcept nogil
        long (*SSL_CTX_callback_ctrl)(SSL_CTX *c, int cmd, fm_void_fn fp) noexcept nogil
        uint64_t (*SSL_CTX_set_options)(SSL_CTX *c, uint64_t op) noexcept nogil
        int (*SSL_CTX_use_certificate_chain_file)(SSL_CTX *c, const char *path) noexcept nogil
        int (*SSL_CTX_use_PrivateKey_file)(SSL_CTX *c, const char *path, int type) noexcept nogil
        int (*SSL_CTX_check_private_key)(const SSL_CTX *c) noexcept nogil
        int (*SSL_CTX_set_cipher_list)(SSL_CTX *c, const char *s) noexcept nogil
        int (*SSL_CTX_set_ciphersuites)(SSL_CTX *c, const char *s) noexcept nogil
        int (*SSL_CTX_load_verify_locations)(SSL_CTX *c, const char *file, const char *dir) noexcept nogil
        int (*SSL_CTX_set_default_verify_paths)(SSL_CTX *c) noexcept nogil
        void (*SSL_CTX_set_verify)(SSL_CTX *c, int mode, void *cb) noexcept nogil
        void *(*SSL_load_client_CA_file)(const char *path) noexcept nogil
        void (*SSL_CTX_set_client_CA_list)(SSL_CTX *c, void *names) noexcept nogil
        int (*SSL_CTX_set_session_id_context)(SSL_CTX *c, const unsigned char *sid, unsigned int n) noexcept nogil
        void (*SSL_CTX_set_alpn_select_cb)(SSL_CTX *c, fm_alpn_cb cb, void *arg) noexcept nogil
        int (*SSL_CTX_set_alpn_protos)(SSL_CTX *c, const unsigned char *protos, unsigned int n) noexcept nogil
        void (*SSL_CTX_sess_set_new_cb)(SSL_CTX *c, fm_new_session_cb cb) noexcept nogil
        X509 *(*SSL_CTX_get0_certificate)(const SSL_CTX *c) noexcept nogil
        int (*SSL_select_next_proto)(unsigned char **out, unsigned char *outlen, const unsigned char *server,
                                     unsigned int server_len, const unsigned char *client,
                                     unsigned int client_len) noexcept nogil
        SSL *(*SSL_new)(SSL_CTX *c) noexcept nogil
        void (*SSL_free)(SSL *s) noexcept nogil
        int (*SSL_set_fd)(SSL *s, int fd) noexcept nogil
        void (*SSL_set_accept_state)(SSL *s) noexcept nogil
        void (*SSL_set_connect_state)(SSL *s) noexcept nogil
        int (*SSL_do_handshake)(SSL *s) noexcept nogil
        int (*SSL_read)(SSL *s, void *buf, int n) noexcept nogil
        int (*SSL_write)(SSL *s, const void *buf, int n) noexcept nogil
        int (*SSL_get_error)(const SSL *s, int ret) noexcept nogil
        int (*SSL_shutdown)(SSL *s) noexcept nogil
        long (*SSL_ctrl)(SSL *s, int cmd, long larg, void *parg) noexcept nogil
        const char *(*SSL_get_servername)(const SSL *s, int type) noexcept nogil
        SSL_CTX *(*SSL_set_SSL_CTX)(SSL *s, SSL_CTX *c) noexcept nogil
        void (*SSL_get0_alpn_selected)(const SSL *s, const unsigned char **data, unsigned int *n) noexcept nogil
        int (*SSL_session_reused)(const SSL *s) noexcept nogil
        const char *(*SSL_get_version)(const SSL *s) noexcept nogil
        long (*SSL_get_verify_result)(const SSL *s) noexcept nogil
        X509 *(*SSL_get1_peer_certificate)(const SSL *s) noexcept nogil
        int (*SSL_set1_host)(SSL *s, const char *host) noexcept nogil
        X509_VERIFY_PARAM *(*SSL_get0_param)(SSL *s) noexcept nogil
        int (*X509_VERIFY_PARAM_set1_ip_asc)(X509_VERIFY_PARAM *p, const char *ip) noexcept nogil
        int (*SSL_set_ex_data)(SSL *s, int idx, void *data) noexcept nogil
        void *(*SSL_get_ex_data)(const SSL *s, int idx) noexcept nogil
        int (*SSL_set_session)(SSL *s, SSL_SESSION *sess) noexcept nogil
        void (*SSL_SESSION_free)(SSL_SESSION *sess) noexcept nogil
        int (*SSL_SESSION_is_resumable)(const SSL_SESSION *sess) noexcept nogil
        unsigned long (*ERR_get_error)() noexcept nogil
        void (*ERR_clear_error)() noexcept nogil
        void (*ERR_error_string_n)(unsigned long e, char *buf, size_t n) noexcept nogil
        const char *(*X509_verify_cert_error_string)(long n) noexcept nogil
        void (*X509_free)(X509 *x) noexcept nogil
        void *(*X509_get_ext_d2i)(const X509 *x, int nid, int *crit, int *idx) noexcept nogil
        const ASN1_STRING *(*X509_get0_notAfter)(const X509 *x) noexcept nogil
        int (*ASN1_TIME_diff)(int *days, int *secs, const ASN1_STRING *start, const ASN1_STRING *end) noexcept nogil
        int (*OPENSSL_sk_num)(const OPENSSL_STACK *sk) noexcept nogil
        void *(*OPENSSL_sk_value)(const OPENSSL_STACK *sk, int i) noexcept nogil
        void (*GENERAL_NAMES_free)(void *names) noexcept nogil
        int (*ASN1_STRING_length)(const ASN1_STRING *s) noexcept nogil
        const unsigned char *(*ASN1_STRING_get0_data)(const ASN1_STRING *s) noexcept nogil
        int (*RAND_bytes)(unsigned char *buf, int n) noexcept nogil
        const EVP_CIPHER *(*EVP_aes_256_cbc)() noexcept nogil
        const EVP_MD *(*EVP_sha256)() noexcept nogil
        int (*EVP_EncryptInit_ex)(EVP_CIPHER_CTX *c, const EVP_CIPHER *t, void *engine, const unsigned char *key,
                                  const unsigned char *iv) noexcept nogil
        int (*EVP_DecryptInit_ex)(EVP_CIPHER_CTX *c, const EVP_CIPHER *t, void *engine, const unsigned char *key,
                                  const unsigned char *iv) noexcept nogil
        int (*HMAC_Init_ex)(HMAC_CTX *c, const void *key, int n, const EVP_MD *md, void *engine) noexcept nogil
        unsigned char *(*HMAC)(const EVP_MD *md, const void *key, int key_len, const unsigned char *d, size_t n,
                               unsigned char *out, unsigned int *out_len) noexcept nogil
        void *(*X509_STORE_CTX_get_ex_data)(const X509_STORE_CTX *c, int idx) noexcept nogil
        int (*SSL_get_ex_data_X509_STORE_CTX_idx)() noexcept nogil
        int (*X509_STORE_CTX_get_error_depth)(const X509_STORE_CTX *c) noexcept nogil
        X509 *(*X509_STORE_CTX_get_current_cert)(const X509_STORE_CTX *c) noexcept nogil
        void (*X509_STORE_CTX_set_error)(X509_STORE_CTX *c, int err) noexcept nogil

# The constants (stable across OpenSSL 1.1.1 and 3.x: they are part of the ABI).
cdef enum:
    SSL_ERROR_NONE = 0
    SSL_ERROR_SSL = 1
    SSL_ERROR_WANT_READ = 2
    SSL_ERROR_WANT_WRITE = 3
    SSL_ERROR_SYSCALL = 5
    SSL_ERROR_ZERO_RETURN = 6
    SSL_FILETYPE_PEM = 1
    SSL_CTRL_MODE = 33
    SSL_CTRL_SET_READ_AHEAD = 41
    SSL_CTRL_SET_SESS_CACHE_MODE = 44
    SSL_CTRL_SET_TLSEXT_SERVERNAME_CB = 53
    SSL_CTRL_SET_TLSEXT_SERVERNAME_ARG = 54
    SSL_CTRL_SET_TLSEXT_HOSTNAME = 55
    SSL_CTRL_SET_TLSEXT_TICKET_KEY_CB = 72
    SSL_CTRL_SET_GROUPS_LIST = 92
    SSL_CTRL_SET_MIN_PROTO_VERSION = 123
    SSL_CTRL_SET_MAX_PROTO_VERSION = 124
    SSL_MODE_ENABLE_PARTIAL_WRITE = 0x1
    SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER = 0x2
    SSL_MODE_RELEASE_BUFFERS = 0x10
    SSL_SESS_CACHE_OFF = 0
    SSL_SESS_CACHE_CLIENT = 0x1
    SSL_SESS_CACHE_NO_INTERNAL_STORE = 0x200
    SSL_VERIFY_NONE = 0
    SSL_VERIFY_PEER = 1
    SSL_VERIFY_FAIL_IF_NO_PEER_CERT = 2
    SSL_TLSEXT_ERR_OK = 0
    SSL_TLSEXT_ERR_ALERT_FATAL = 2
    SSL_TLSEXT_ERR_NOACK = 3
    SSL_AD_UNRECOGNIZED_NAME = 112
    TLSEXT_NAMETYPE_host_name = 0
    OPENSSL_NPN_NEGOTIATED = 1
    NID_subject_alt_name = 85
    GEN_DNS = 2
    GEN_URI = 6
    X509_V_ERR_APPLICATION_VERIFICATION = 50
    TLS1_VERSION = 0x0301
    TLS1_1_VERSION = 0x0302
    TLS1_2_VERSION = 0x0303
    TLS1_3_VERSION = 0x0304

cdef extern from *:
    """
    #define FM_SSL_OP_NO_TICKET (1ULL << 14)
    #define FM_SSL_OP_NO_COMPRESSION (1ULL << 17)
    #define FM_SSL_OP_CIPHER_SERVER_PREFERENCE (1ULL << 22)
    #define FM_SSL_OP_NO_RENEGOTIATION (1ULL << 30)
    """
    const uint64_t SSL_OP_NO_TICKET "FM_SSL_OP_NO_TICKET"
    const uint64_t SSL_OP_NO_COMPRESSION "FM_SSL_OP_NO_COMPRESSION"
    const uint64_t SSL_OP_CIPHER_SERVER_PREFERENCE "FM_SSL_OP_CIPHER_SERVER_PREFERENCE"
    const uint64_t SSL_OP_NO_RENEGOTIATION "FM_SSL_OP_NO_RENEGOTIATION"


# The table, filled once at import of fastmesh._core.tls.openssl; `loaded` is 0 when no usable libssl was found.
cdef FmOssl *ossl_table() noexcept
