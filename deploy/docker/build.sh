#!/usr/bin/env bash
# Builds the image from a binary compiled here (no base image to pull: the
# image is FROM scratch). Usage, from anywhere:
#   deploy/docker/build.sh                 # dist/ only
#   deploy/docker/build.sh docker  [TAG]   # then docker build
#   deploy/docker/build.sh buildah [TAG]   # then buildah bud (chroot isolation)
set -euo pipefail
cd "$(dirname "$0")/../.."
tag=${2:-modelgate:dev}

rm -rf dist
mkdir -p dist/rootfs/etc/modelgate dist/rootfs/tmp dist/rootfs/etc/ssl/certs dist/owned/data
pkg=github.com/modelgate/modelgate/buildinfo
commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then commit="$commit+dirty"; fi
date=$(git log -1 --format=%cI 2>/dev/null || date -u +%Y-%m-%dT%H:%M:%SZ)
version=$(git describe --tags --always --dirty 2>/dev/null || echo devel)
# Static: the image has no libc.
CGO_ENABLED=0 go build -trimpath \
	-ldflags "-s -w -X $pkg.commit=$commit -X $pkg.date=$date -X $pkg.version=$version" \
	-o dist/modelgate .
# The upstream hosts' TLS roots: scratch has none.
cp /etc/ssl/certs/ca-certificates.crt dist/rootfs/etc/ssl/certs/
# A named non-root user (uid/gid 65532), for ps and for tools that look it up.
printf 'root:x:0:0:root:/:/sbin/nologin\nmodelgate:x:65532:65532:modelgate:/data:/sbin/nologin\n' >dist/rootfs/etc/passwd
printf 'root:x:0:\nmodelgate:x:65532:\n' >dist/rootfs/etc/group
chmod 1777 dist/rootfs/tmp

case "${1:-}" in
docker) docker build -t "$tag" . ;;
buildah) buildah bud --isolation chroot --format docker -t "$tag" . ;;
"") echo "dist/ is ready; build with: docker build -t $tag ." ;;
*) echo "usage: $0 [docker|buildah] [TAG]" >&2; exit 2 ;;
esac
