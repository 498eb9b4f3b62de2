#!/usr/bin/env bash
# Serve a cached blob through the gateway and through nginx on loopback and
# compare them, over plain HTTP (mirror mode) and over HTTPS (the gateway's
# CONNECT interception against nginx with TLS). Installs nginx from Debian if
# it is missing, builds the gateway from this tree, then runs bench/blobbench
# with any arguments given here, e.g.:
#   bash bench/run.sh --size 256MiB --rounds 5
#   bash bench/run.sh --modes https --https-rounds 5
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

find_nginx() {
	command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || true
}

nginx_bin=$(find_nginx)
if [ -z "$nginx_bin" ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "run.sh: nginx is not installed and installing it needs root" >&2
		exit 1
	fi
	echo "run.sh: installing nginx from Debian" >&2
	export DEBIAN_FRONTEND=noninteractive
	# Keep the package's service from starting (it would listen on port 80
	# on every interface): a policy-rc.d that refuses all actions, only for
	# the time of the install and only if there is none already.
	policy=/usr/sbin/policy-rc.d
	made_policy=
	if [ ! -e "$policy" ]; then
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		made_policy=1
		trap 'rm -f "$policy"' EXIT
	fi
	apt-get update
	apt-get install -y nginx-light || apt-get install -y nginx
	if [ -n "$made_policy" ]; then
		rm -f "$policy"
		trap - EXIT
	fi
	nginx_bin=$(find_nginx)
	if [ -z "$nginx_bin" ]; then
		echo "run.sh: nginx still not found after installing it" >&2
		exit 1
	fi
fi

build_dir=$(mktemp -d)
trap 'rm -rf "$build_dir"' EXIT
echo "run.sh: building the gateway" >&2
go build -o "$build_dir/modelgate" .

go run ./bench/blobbench --gateway "$build_dir/modelgate" --nginx "$nginx_bin" "$@"
