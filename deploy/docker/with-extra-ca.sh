#!/bin/sh
# Runs a build command ("$@") so that it trusts an optional extra CA certificate,
# for builds behind a TLS-intercepting proxy. The Dockerfile bind-mounts this
# script and mounts the certificate as the build secret `extra_ca`; both live only
# for the RUN step, so neither the certificate nor the combined bundle is in a layer.
# An optional pip configuration (index URL with credentials) comes as the secret `pip_conf`.
set -eu
secrets="${SECRETS_DIR:-/run/secrets}"  # overridable for the script's own test
extra="$secrets/extra_ca"
if [ -s "$extra" ]; then
    bundle="$(mktemp)"
    apt_conf="$(mktemp)"
    trap 'rm -f "$bundle" "$apt_conf"' EXIT
    # The system bundle, when the base already has one, plus the extra certificate.
    if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
        cat /etc/ssl/certs/ca-certificates.crt >"$bundle"
    fi
    cat "$extra" >>"$bundle"
    echo "Acquire::https::CAInfo \"$bundle\";" >"$apt_conf"
    export PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" REQUESTS_CA_BUNDLE="$bundle"
    export APT_CONFIG="$apt_conf"
fi
if [ -s "$secrets/pip_conf" ]; then
    export PIP_CONFIG_FILE="$secrets/pip_conf"
fi
"$@"
