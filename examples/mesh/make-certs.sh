#!/bin/sh
# Makes the two-instance mesh example's certificates in ./certs (next to the configs): a mesh CA and one
# certificate per instance, each with a DNS name (what the other instance verifies) and a SPIFFE ID (its identity).
# For trying the example only: a real mesh's certificates come from its CA (cert-manager, SPIRE, Vault, ...).
set -eu
cd "$(dirname "$0")"
mkdir -p certs
cd certs
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 30 -subj /CN=mesh-ca \
    -addext keyUsage=critical,keyCertSign,cRLSign -keyout ca.key -out ca.pem 2>/dev/null
for who in frontend backend; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=$who" \
        -keyout "$who.key" -out "$who.csr" 2>/dev/null
    # Key identifiers (and the CA's key usage above): strict verifiers, Python 3.13's default TLS client for one,
    # refuse a chain without them.
    printf 'subjectAltName=DNS:%s.mesh.test,URI:spiffe://mesh.test/ns/demo/sa/%s\nsubjectKeyIdentifier=hash\nauthorityKeyIdentifier=keyid,issuer\n' \
        "$who" "$who" > "$who.ext"
    openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 -extfile "$who.ext" \
        -out "$who.pem" 2>/dev/null
    rm "$who.csr" "$who.ext"
done
echo "certificates in $(pwd): ca.pem, frontend.pem/.key, backend.pem/.key"
