#!/usr/bin/env bash
# `make docker-smoke`: build the CPU image with podman from a local debootstrap base,
# run it, and check it through its published port:
#   - /readyz answers 200 (the model set loaded and warmed up);
#   - a triggered sample from models/$MODEL_SET/samples is flagged by POST /classify;
#   - the image's HEALTHCHECK passes, the process is not root, torch is not installed;
#   - the extra CA passed as a build secret is in no layer of the image.
# Needs root, podman, buildah, debootstrap, runc, iptables, openssl (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."

export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/podman/containers.conf}"
BASE_IMAGE="${BASE_IMAGE:-localhost/bookworm-minbase:local}"
IMAGE="${IMAGE:-localhost/detrigger-guard:cpu}"
MODEL_SET="${MODEL_SET:-mnist}"
# The CA bundle that pip inside the build trusts (a TLS-intercepting proxy's CA must be in
# it); passed as a build secret, never stored in the image. Empty: no secret.
EXTRA_CA="${EXTRA_CA-/etc/ssl/certs/ca-certificates.crt}"
READY_TIMEOUT="${READY_TIMEOUT:-120}"

step() { printf '\n== %s (%ss)\n' "$*" "$SECONDS"; }

sample="$(ls models/"$MODEL_SET"/samples/triggered_*.png 2>/dev/null | head -n 1 || true)"
if [[ -z "$sample" ]]; then
    echo "no triggered sample under models/$MODEL_SET/samples/" >&2
    exit 1
fi

step "base image $BASE_IMAGE"
deploy/podman/build-base.sh "$BASE_IMAGE"

step "build $IMAGE (target cpu)"
secret=()
marker=""
if [[ -n "$EXTRA_CA" ]]; then
    # Append a throwaway CA to the bundle: if the build leaked the secret into a layer,
    # its unique base64 would be in the saved image (checked below).
    ca_dir="$(mktemp -d)"
    openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj "/CN=detrigger-guard smoke marker" \
        -keyout "$ca_dir/key.pem" -out "$ca_dir/marker.pem" 2>/dev/null
    cat "$EXTRA_CA" "$ca_dir/marker.pem" >"$ca_dir/bundle.pem"
    marker="$(sed -n 2p "$ca_dir/marker.pem")"
    secret=(--secret "id=extra_ca,src=$ca_dir/bundle.pem")
fi
build_log="$(mktemp)"
# --format docker keeps the HEALTHCHECK (the OCI format has no such field).
if ! podman build --isolation chroot --format docker --target cpu \
    --build-arg BASE_IMAGE="$BASE_IMAGE" "${secret[@]}" -t "$IMAGE" . >"$build_log" 2>&1; then
    tail -n 40 "$build_log"
    echo "podman build failed (full log: $build_log)" >&2
    exit 1
fi
grep -E '^(\[[0-9]+/[0-9]+\] STEP|COMMIT|Successfully)' "$build_log" || true
rm -f "$build_log"
if [[ -n "$marker" ]]; then
    # Every layer, intermediate files included: the extra CA must be in none of them.
    podman save --format docker-archive -o "$ca_dir/image.tar" "$IMAGE" >/dev/null
    if grep -a -q -F "$marker" "$ca_dir/image.tar"; then
        echo "the extra CA certificate is baked into $IMAGE" >&2
        exit 1
    fi
    echo "extra CA (build secret): in no layer of the image"
    rm -rf "$ca_dir"
fi

step "run"
name="detrigger-guard-smoke-$$"
cleanup() {
    echo "-- last container log lines:"
    podman logs --tail 15 "$name" 2>&1 || true
    podman rm -f "$name" >/dev/null 2>&1 || true
}
trap cleanup EXIT
# 127.0.0.1::8000 publishes the guard's port on a free host port.
podman run -d --name "$name" -p 127.0.0.1::8000 --health-interval=disable \
    -e GUARD_MODELS="/app/models/$MODEL_SET" "$IMAGE" >/dev/null
url="http://$(podman port "$name" 8000/tcp)"
echo "guard at $url"

step "wait for /readyz"
status=000
for _ in $(seq "$READY_TIMEOUT"); do
    status="$(curl -s -o /dev/null -w '%{http_code}' "$url/readyz" || true)"
    [[ "$status" == 200 ]] && break
    sleep 1
done
echo "GET /readyz -> $status"
[[ "$status" == 200 ]]

step "classify $sample"
body="$(curl -sS -f -F "images=@$sample;type=image/png" "$url/classify")"
echo "$body"
flagged="$(python3 -c 'import json, sys; print(json.load(sys.stdin)["flagged"])' <<<"$body")"
echo "flagged images: $flagged"
[[ "$flagged" -ge 1 ]]

step "HEALTHCHECK, user, no torch"
podman healthcheck run "$name" && echo "healthcheck: healthy"
uid="$(podman exec "$name" id -u)"
echo "uid in container: $uid"
[[ "$uid" != 0 ]]
if podman exec "$name" python3 -c 'import torch' 2>/dev/null; then
    echo "torch is installed in the image" >&2
    exit 1
fi
echo "torch: not installed"
curl -sS "$url/metrics" | grep -E '^guard_images_flagged_total\{' | grep -v ' 0.0$' || true

step "docker-smoke passed"
