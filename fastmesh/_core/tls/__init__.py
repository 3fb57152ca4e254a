"""TLS for the compiled data path: OpenSSL bound at import (openssl.pyx), contexts and connections (context.pyx),
and the ClientHello reader used to route by SNI without decrypting (clienthello.pyx)."""
