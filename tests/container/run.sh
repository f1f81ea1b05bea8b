#!/usr/bin/env bash
# The container path, end to end: builds the repository's Dockerfile, unchanged, with
# podman (no Docker engine and no registry needed) and checks the image through HTTP.
#
# The base images the Dockerfile names cannot be pulled here, so they are made locally
# under the names it asks for, and the build runs with --pull=never:
#   debian:bookworm-slim  a debootstrap minbase of bookworm from the mirror apt is
#                         configured with, slimmed as the official image is;
#   rust:1-slim-bookworm  that image plus gcc and the host's rustup toolchain, laid out
#                         as the official image (rust-base.Containerfile).
# The build reaches crates.io and Debian's mirror through --network host.
# podman's storage, the rootfs tarball and cargo's registry are cached under
# ~/.cache/grainstore/container (GRAINSTORE_CACHE moves ~/.cache/grainstore).
#
# Checks: the image's configuration (user, volume, port, healthcheck, command); /healthz
# and the image's HEALTHCHECK; a flow created, grains written and read back; PID 1 being
# grainstore running as the non-root user; configuration by GRAINSTORE__ variables;
# `podman stop` ending it by SIGTERM with exit code 0 within the shutdown deadline while
# a live stream is open; the data kept by a new container on the same volume. Prints the
# image size and the time of each phase.
#
# Runs as root (podman with the vfs driver and runc, a network namespace); installs
# podman, runc and debootstrap with apt-get when they are missing.
set -euo pipefail
cd "$(dirname "$0")/../.."

cache="${GRAINSTORE_CACHE:-$HOME/.cache/grainstore}/container"
mkdir -p "$cache"
# One run at a time: the storage and the caches are shared.
exec 9>"$cache/lock"
flock 9

image=localhost/grainstore-ci:latest
suffix="$$"
container="grainstore-ci-$suffix"
volume="grainstore-ci-data-$suffix"
netns="grainstore-ci-$suffix"
# The container has a network namespace of its own (made here) so that the image's own
# command, on port 8080, is what runs, whatever the host has on that port.
base_url=http://127.0.0.1:8080
# The Dockerfile's grainstore user.
expected_uid=10001
# podman stop's grace period before SIGKILL, its default.
stop_timeout_s=10

# --- output and timing -------------------------------------------------------------

script_start=$SECONDS
phase_name=""
phase_start=$SECONDS
timings=()
passed=0

end_phase() {
  if [[ -n $phase_name ]]; then
    timings+=("$(printf '%5ds  %s' $((SECONDS - phase_start)) "$phase_name")")
  fi
}
phase() {
  end_phase
  phase_name="$*"
  phase_start=$SECONDS
  printf '\n--> %s\n' "$*"
}
ok() {
  passed=$((passed + 1))
  printf 'ok   %s\n' "$*"
}
fail() {
  printf 'FAIL %s\n' "$*" >&2
  show_logs
  exit 1
}

# --- cleanup -----------------------------------------------------------------------

containers=()
rootfs_tmp=""
sse_pid=""
upload_pid=""

pm() {
  podman --root "$cache/storage" --runroot /run/grainstore-container \
    --storage-driver vfs --runtime runc --cgroup-manager cgroupfs --events-backend file \
    "$@" 2> >(grep -v 'systemd connection' >&2)
}

show_logs() {
  local c
  for c in "${containers[@]}"; do
    if pm container exists "$c" 2>/dev/null; then
      printf '\n--- logs of %s\n' "$c" >&2
      pm logs "$c" 2>&1 | tail -n 40 >&2 || true
    fi
  done
}

cleanup() {
  set +e
  [[ -n $sse_pid ]] && kill "$sse_pid" 2>/dev/null
  [[ -n $upload_pid ]] && kill "$upload_pid" 2>/dev/null
  local c
  for c in "${containers[@]}"; do
    pm rm -f -t 0 "$c" >/dev/null 2>&1
  done
  if command -v podman >/dev/null; then
    pm volume rm -f "$volume" >/dev/null 2>&1
  fi
  ip netns del "$netns" 2>/dev/null
  [[ -n $rootfs_tmp ]] && rm -rf "$rootfs_tmp"
  rm -rf "${work:-}"
}
trap cleanup EXIT

work=$(mktemp -d)

# --- tools -------------------------------------------------------------------------

phase "tools: podman, runc, debootstrap"
missing=()
command -v podman >/dev/null || missing+=(podman)
command -v runc >/dev/null || missing+=(runc)
command -v debootstrap >/dev/null || missing+=(debootstrap)
command -v ip >/dev/null || missing+=(iproute2)
if ((${#missing[@]})); then
  echo "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >"$work/apt.log" 2>&1 \
    || { tail -n 20 "$work/apt.log"; fail "apt-get install ${missing[*]}"; }
fi
podman --version
runc --version | head -n 1

# Podman's defaults exceed this sandbox's hard limits; stay at or below them.
limit() { # limit HARD WANTED
  if [[ $1 == unlimited || $1 -ge $2 ]]; then echo "$2"; else echo "$1"; fi
}
nofile=$(limit "$(ulimit -Hn)" 20000)
nproc=$(limit "$(ulimit -Hu)" 32768)
limits=(--ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

# --- debian:bookworm-slim ----------------------------------------------------------

phase "base image debian:bookworm-slim (debootstrap minbase, cached)"

# The URIs apt is configured with, from one-line and deb822 sources.
apt_uris() {
  {
    sed -n 's/^[[:space:]]*URIs:[[:space:]]*//p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
      | tr ' ' '\n'
    sed -nE 's/^[[:space:]]*deb[[:space:]]+(\[[^]]*\][[:space:]]+)?([^[:space:]]+).*/\2/p' \
      /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null
  } | sed 's:/*$::' | grep -v '^$' || true
}
mirror="${GRAINSTORE_DEBIAN_MIRROR:-$(apt_uris | grep -E '/debian$' | head -n 1)}"
security_mirror="${GRAINSTORE_DEBIAN_SECURITY_MIRROR:-$(apt_uris | grep -E '/debian-security$' | head -n 1)}"
[[ -n $mirror ]] || fail "no Debian mirror in apt's sources; set GRAINSTORE_DEBIAN_MIRROR"
echo "mirror: $mirror${security_mirror:+, security: $security_mirror}"

base_tar="$cache/debian-bookworm-minbase.tar"
# A month-old rootfs is made anew; the Dockerfile's apt-get brings what is newer anyway.
# A tarball whose root is not 0755 (as mktemp made it) would lock out non-root users.
root_entry=""
if [[ -s $base_tar ]]; then
  root_entry=$(tar -tvf "$base_tar" 2>/dev/null | head -n 1 || true)
fi
if [[ $root_entry == "drwxr-xr-x "*" ./" ]] && [[ -z $(find "$base_tar" -mtime +30) ]]; then
  echo "cached rootfs: $base_tar ($(du -h "$base_tar" | cut -f1))"
else
  rootfs_tmp=$(mktemp -d "$cache/rootfs.XXXXXX")
  echo "debootstrap --variant=minbase bookworm (log: $cache/debootstrap.log)"
  debootstrap --variant=minbase bookworm "$rootfs_tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 \
    || { tail -n 20 "$cache/debootstrap.log"; fail "debootstrap"; }
  # As the official slim image: no documentation, manuals or translations, now or
  # in what apt-get installs later, and no package lists or downloaded packages.
  cat >"$rootfs_tmp/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  cat >"$rootfs_tmp/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs_tmp/etc/apt/apt.conf.d/docker-no-languages"
  find "$rootfs_tmp/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete
  find "$rootfs_tmp/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs_tmp"/usr/share/{man,info,groff,lintian,linda}/*
  find "$rootfs_tmp/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias \
    -exec rm -rf {} +
  rm -rf "$rootfs_tmp"/var/lib/apt/lists/* "$rootfs_tmp"/var/cache/apt/* \
    "$rootfs_tmp"/var/log/* "$rootfs_tmp"/tmp/*
  # The sources of the official image: the release, its updates and security.
  rm -f "$rootfs_tmp/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm bookworm-updates\nComponents: main\n' "$mirror"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [[ -n $security_mirror ]]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security_mirror"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$rootfs_tmp/etc/apt/sources.list.d/debian.sources"
  chmod 0755 "$rootfs_tmp"
  tar --numeric-owner -C "$rootfs_tmp" -cf "$base_tar.part" .
  mv "$base_tar.part" "$base_tar"
  rm -rf "$rootfs_tmp"
  rootfs_tmp=""
  echo "rootfs: $base_tar ($(du -h "$base_tar" | cut -f1))"
fi

# Images are remade when what they are made of changed; a label records it.
label_of() { # label_of IMAGE KEY
  pm image inspect --format "{{index .Labels \"$2\"}}" "$1" 2>/dev/null || true
}
base_image=docker.io/library/debian:bookworm-slim
# The tarball's time, and the version of how it is imported here.
base_key="$(stat -c %Y "$base_tar") 2"
if [[ $(label_of "$base_image" grainstore.rootfs) == "$base_key" ]]; then
  echo "image $base_image is up to date"
else
  # The configuration of the official image: its PATH and command.
  pm import --quiet --change 'CMD ["bash"]' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change "LABEL grainstore.rootfs=$base_key" \
    - "$base_image" <"$base_tar" >/dev/null
  echo "imported $base_image"
fi

# --- rust:1-slim-bookworm ----------------------------------------------------------

phase "build image rust:1-slim-bookworm (host toolchain, cached)"
command -v rustc >/dev/null || fail "no Rust toolchain on the host (rustc) to put in the image"
rustup_bin=$(command -v rustup) || fail "no rustup on the host to put in the image"
rustup_bin=$(readlink -f "$rustup_bin")
sysroot=$(rustc --print sysroot)
host_triple=$(rustc -vV | sed -n 's/^host: //p')
toolchain="$(rustc -V | cut -d' ' -f2)-$host_triple"
rust_image=docker.io/library/rust:1-slim-bookworm
# The host's local certificate authorities (*.crt, as update-ca-certificates takes them).
mkdir -p "$work/ca"
if [[ -d /usr/local/share/ca-certificates ]]; then
  cp -r /usr/local/share/ca-certificates/. "$work/ca/"
fi
ca_sum=$(find "$work/ca" -type f -name '*.crt' -print0 | sort -z | xargs -0r cat | sha256sum | cut -c1-16)
rust_key="$toolchain $(pm image inspect --format '{{.Id}}' "$base_image") ca:$ca_sum"
if [[ $(label_of "$rust_image" grainstore.toolchain) == "$rust_key" ]]; then
  echo "image $rust_image ($toolchain) is up to date"
else
  pm build --quiet --pull=never --network host \
    --build-arg "RUST_TOOLCHAIN=$toolchain" --label "grainstore.toolchain=$rust_key" \
    -v "$sysroot:/host-toolchain:ro" -v "$rustup_bin:/host-rustup:ro" -v "$work/ca:/host-ca:ro" \
    -f tests/container/rust-base.Containerfile -t "$rust_image" tests/container >/dev/null
  echo "built $rust_image with $toolchain"
fi
pm run --rm --network none "${limits[@]}" "$rust_image" cargo --version

# --- the Dockerfile ----------------------------------------------------------------

phase "podman build of the Dockerfile (--pull=never)"
mkdir -p "$cache/cargo-registry"
# --format docker keeps the HEALTHCHECK (the OCI image format has no such field).
# The registry volume only caches downloads between runs; the build works without it.
build() { # build [podman build options]
  local status
  set +e
  pm build --pull=never --network host --format docker \
    -v "$cache/cargo-registry:/usr/local/cargo/registry" "$@" . 2>&1 \
    | tee -a "$work/build.log" \
    | grep --line-buffered -E 'STEP [0-9]|Using cache|Compiling grainstore|Finished'
  status=${PIPESTATUS[0]}
  set -e
  ((status == 0)) || { tail -n 40 "$work/build.log"; fail "podman build"; }
}
# The build stage is tagged too, so that it is kept as the cache of a rebuild of the same
# tree; the second build reuses it.
build --target build -t localhost/grainstore-ci-build:latest
build -t "$image"
# Layers no image uses any more (earlier builds) are full copies with vfs: reclaim them.
pm image prune -f >/dev/null

# --- the image's configuration -----------------------------------------------------

phase "image configuration"
pm image inspect "$image" >"$work/image.json"
python3 - "$work/image.json" "$expected_uid" <<'EOF' || fail "image configuration"
import json, sys
image = json.load(open(sys.argv[1]))[0]
config = image["Config"]
health = image.get("HealthCheck") or image.get("Healthcheck") or config.get("Healthcheck") or {}
checks = {
    "user is grainstore": config.get("User") == "grainstore",
    "volume /data": "/data" in (config.get("Volumes") or {}),
    "port 8080/tcp exposed": "8080/tcp" in (config.get("ExposedPorts") or {}),
    "healthcheck curls /healthz": "/healthz" in " ".join(health.get("Test") or []),
    "entrypoint grainstore": config.get("Entrypoint") == ["grainstore"],
    "command serves 0.0.0.0:8080 on /data": config.get("Cmd")
    == ["serve", "--listen", "0.0.0.0:8080", "--data-dir", "/data"],
}
for what, good in checks.items():
    print(("ok   " if good else "FAIL ") + what)
if not all(checks.values()):
    print(json.dumps({"Config": config, "HealthCheck": health}, indent=1))
    sys.exit(1)
EOF
passed=$((passed + 6))

size_bytes=$(pm image inspect --format '{{.Size}}' "$image")
printf 'image size: %s MB (%s bytes)\n' $((size_bytes / 1000000)) "$size_bytes"
pm images --filter reference="$image" --filter reference="$base_image" --filter reference="$rust_image"

# --- run ---------------------------------------------------------------------------

phase "run the container"
ip netns add "$netns"
ip -n "$netns" link set lo up
pm volume create "$volume" >/dev/null

http() { # curl in the container's network namespace
  ip netns exec "$netns" curl -sS --max-time 10 "$@"
}

start_container() { # start_container NAME [podman run options]
  local name=$1 i
  shift
  containers+=("$name")
  pm run -d --name "$name" --network "ns:/run/netns/$netns" "${limits[@]}" \
    -v "$volume:/data" "$@" "$image" >/dev/null
  for ((i = 0; i < 300; i++)); do
    if http -o /dev/null -f "$base_url/healthz" 2>/dev/null; then
      return 0
    fi
    [[ $(pm inspect --format '{{.State.Running}}' "$name") == true ]] || fail "$name exited at start"
    sleep 0.1
  done
  fail "$name not healthy after 30 s"
}

# podman stop (SIGTERM, SIGKILL after $stop_timeout_s s); sets stop_ms.
stop_container() { # stop_container NAME DEADLINE_MS
  local start_ns stopped_ns exit_code
  start_ns=$(date +%s%N)
  pm stop -t "$stop_timeout_s" "$1" >/dev/null
  stopped_ns=$(date +%s%N)
  stop_ms=$(((stopped_ns - start_ns) / 1000000))
  exit_code=$(pm inspect --format '{{.State.ExitCode}}' "$1")
  [[ $exit_code == 0 ]] || fail "$1 ended with exit code $exit_code after podman stop (${stop_ms} ms)"
  # The deadline bounds the drain; exiting takes a moment more.
  ((stop_ms < $2 + 1000)) || fail "$1 took ${stop_ms} ms to stop (deadline $2 ms)"
  # Without the colours of the pretty log format.
  pm logs "$1" 2>&1 | sed 's/\x1b\[[0-9;]*m//g' >"$work/stop.log"
  grep -q "shutting down" "$work/stop.log" || fail "$1 logged no graceful shutdown"
  grep -qE "deadline_ms\"?[:=]$2" "$work/stop.log" || fail "$1 did not drain with a deadline of $2 ms"
}

# The first container drains with a deadline shorter than podman's SIGKILL, set through
# the environment, and logs JSON (a second GRAINSTORE__ variable).
deadline_ms=3000
start_container "$container" \
  -e GRAINSTORE__LOG__FORMAT=json -e "GRAINSTORE__SERVER__SHUTDOWN_DEADLINE_MS=$deadline_ms"
ok "GET /healthz answers 200 ($container started)"

pm healthcheck run "$container" >"$work/health.out" 2>&1 \
  || { cat "$work/health.out"; fail "the image's HEALTHCHECK (curl in the image) failed"; }
ok "the image's HEALTHCHECK passes$(tr '\n' ' ' <"$work/health.out" | sed 's/^./: &/')"

http -f "$base_url/" >"$work/info.json" || fail "GET /"
python3 -c 'import json,sys; info=json.load(open(sys.argv[1])); assert "grainstore" in json.dumps(info), info' \
  "$work/info.json" || fail "GET / is not grainstore's service info"
ok "GET / is grainstore's service info: $(tr -d '\n' <"$work/info.json")"

host_pid=$(pm inspect --format '{{.State.Pid}}' "$container")
uid=$(awk '/^Uid:/ {print $2}' "/proc/$host_pid/status")
[[ $uid == "$expected_uid" ]] || fail "the container's PID 1 runs as uid $uid, not $expected_uid"
ok "the server runs as uid $uid (grainstore), not root"
pid1=$(pm exec "$container" cat /proc/1/cmdline | tr '\0' ' ')
[[ $pid1 == "grainstore serve --listen 0.0.0.0:8080 --data-dir /data " ]] \
  || fail "PID 1 in the container is '$pid1'"
ok "PID 1 in the container is '$pid1'"

pm logs "$container" >"$work/start.log" 2>&1
python3 - "$work/start.log" <<'PY' || fail "GRAINSTORE__LOG__FORMAT=json did not take effect"
import json, sys
lines = [l for l in open(sys.argv[1]) if l.strip()]
assert lines, "no log lines"
for line in lines:
    json.loads(line)
PY
ok "configuration by environment: GRAINSTORE__LOG__FORMAT=json gives JSON logs"

# --- grains ------------------------------------------------------------------------

phase "a flow, grains written and read back"
flow=2c8f9a6e-5b1d-4c3a-9e7f-0a1b2c3d4e5f
source_id=7d1e2f3a-4b5c-4d6e-8f90-a1b2c3d4e5f6
code=$(http -o "$work/flow.json" -w '%{http_code}' -X PUT "$base_url/flows/$flow" \
  -H 'content-type: application/json' \
  -d "{\"source_id\": \"$source_id\", \"format\": \"urn:x-nmos:format:data\", \"label\": \"container test\"}")
[[ $code == 201 ]] || { cat "$work/flow.json"; fail "PUT /flows/$flow answered $code, not 201"; }
ok "PUT /flows/$flow created the flow (201)"

# 55 event grains at 25 Hz from 1420102800:0: 50 written in one request now, 5 by an
# upload still open when the container is stopped.
python3 - "$flow" "$source_id" 55 >"$work/all.ndjson" <<'PY'
import base64, json, sys
flow, source, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
for i in range(count):
    payload = {"type": "urn:x-ipstudio:format:event.example", "topic": "/n",
               "data": [{"path": "/n", "pre": None, "post": i}]}
    ns = i * 40_000_000
    ts = f"{1420102800 + ns // 10**9}:{ns % 10**9}"
    grain = {"grain_type": "event", "source_id": source, "flow_id": flow,
             "origin_timestamp": ts, "sync_timestamp": ts,
             "rate": {"numerator": 25, "denominator": 1},
             "duration": {"numerator": 1, "denominator": 25},
             "event_payload": payload}
    data = base64.b64encode(json.dumps(payload).encode()).decode()
    print(json.dumps({"meta": {"@_ns": "urn:x-ipstudio:ns:0.1", "grain": grain}, "data": data}))
PY
head -n 50 "$work/all.ndjson" >"$work/first.ndjson"
tail -n 5 "$work/all.ndjson" >"$work/late.ndjson"

code=$(http -o "$work/written.json" -w '%{http_code}' -X POST "$base_url/flows/$flow/grains" \
  -H 'content-type: application/x-ndjson' --data-binary "@$work/first.ndjson")
[[ $code == 201 ]] || { cat "$work/written.json"; fail "POST grains answered $code, not 201"; }
python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); assert r["written"]==50, r' \
  "$work/written.json" || fail "POST grains: $(cat "$work/written.json")"
ok "POST 50 grains (NDJSON): $(tr -d '\n' <"$work/written.json")"

# Reads the flow's grains as NDJSON and GSF and compares them with those written.
check_grains() { # check_grains NDJSON_FILE TIMERANGE WHEN
  http -f "$base_url/flows/$flow/grains" -H 'accept: application/x-ndjson' \
    >"$work/read.ndjson" || fail "GET grains ($3)"
  python3 - "$1" "$work/read.ndjson" <<'PY' || fail "grains read back ($3) differ from those written"
import json, sys
sent = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
got = [json.loads(l) for l in open(sys.argv[2]) if l.strip()]
assert len(got) == len(sent), f"{len(got)} grains read, {len(sent)} written"
for s, g in zip(sent, got):
    sg, gg = s["meta"]["grain"], g["meta"]["grain"]
    for key in ("origin_timestamp", "flow_id", "source_id", "grain_type", "event_payload"):
        assert sg[key] == gg[key], (key, sg[key], gg[key])
    assert s["data"] == g["data"], (s["data"], g["data"])
PY
  http -f "$base_url/flows/$flow/grains?count=10" -H 'accept: application/x-gsf' \
    -o "$work/read.gsf" || fail "GET grains as GSF ($3)"
  [[ $(head -c 8 "$work/read.gsf") == SSBBgrsg ]] || fail "GET grains as GSF ($3): not a GSF stream"
  http -f "$base_url/flows/$flow" >"$work/flow.json" || fail "GET /flows/$flow ($3)"
  python3 -c 'import json,sys; f=json.load(open(sys.argv[1])); assert f["timerange"]==sys.argv[2], f["timerange"]' \
    "$work/flow.json" "$2" || fail "the flow's timerange ($3): $(cat "$work/flow.json")"
}
check_grains "$work/first.ndjson" "[1420102800:0_1420102802:0)" "first container"
ok "the 50 grains read back equal (NDJSON), as GSF too; flow timerange [1420102800:0_1420102802:0)"

# --- stop --------------------------------------------------------------------------

phase "podman stop: SIGTERM to PID 1, graceful shutdown"
# While stopping, a live subscription is open (shutdown ends it) and an upload has sent
# 5 grains and then stalls (shutdown waits for it, at most the deadline).
ip netns exec "$netns" curl -sS -N -D "$work/sse.headers" -H 'accept: text/event-stream' \
  "$base_url/flows/$flow/grains" >"$work/sse.out" 2>&1 &
sse_pid=$!
mkfifo "$work/upload"
ip netns exec "$netns" curl -sS -X POST -T - -H 'content-type: application/x-ndjson' \
  "$base_url/flows/$flow/grains" <"$work/upload" >"$work/upload.out" 2>&1 &
upload_pid=$!
exec 8>"$work/upload"
cat "$work/late.ndjson" >&8
for ((i = 0; i < 100; i++)); do
  [[ -s $work/sse.headers ]] && grep -q 1420102802:200000000 <(http "$base_url/flows/$flow") && break
  sleep 0.1
done
grep -q '^HTTP/1.1 200' "$work/sse.headers" || fail "the live subscription did not start"
grep -q 1420102802:200000000 <(http "$base_url/flows/$flow") \
  || fail "the 5 grains of the open upload were not committed within 10 s"
ok "an open upload's 5 grains are committed while it is still open; a live subscription is open"

stop_container "$container" "$deadline_ms"
ok "podman stop: exit code 0 after ${stop_ms} ms (drain deadline ${deadline_ms} ms from GRAINSTORE__SERVER__SHUTDOWN_DEADLINE_MS; podman kills after ${stop_timeout_s} s)"
exec 8>&-
wait "$upload_pid" || true

for ((i = 0; i < 50; i++)); do
  kill -0 "$sse_pid" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$sse_pid" 2>/dev/null && fail "the live subscription was still open after the container stopped"
wait "$sse_pid" || true
sse_pid=""
grep -q '^event: shutdown' "$work/sse.out" \
  || fail "the live stream did not end with a shutdown event: $(cat "$work/sse.out")"
ok "the live stream ended with 'event: shutdown'"

# --- the volume --------------------------------------------------------------------

phase "a new container on the same volume"
pm rm "$container" >/dev/null
start_container "$container-2"
ok "a new container started on volume $volume, with the image's defaults"
check_grains "$work/all.ndjson" "[1420102800:0_1420102802:200000000)" "after restart"
ok "the 55 grains and the flow are there, the open upload's 5 included"
stop_container "$container-2" 10000
ok "podman stop of an idle container: exit code 0 after ${stop_ms} ms (default deadline 10000 ms)"

end_phase
printf '\n--> timings\n'
printf '%s\n' "${timings[@]}"
printf '%5ds  total\n' $((SECONDS - script_start))
printf 'image size: %s MB\n' $((size_bytes / 1000000))
printf '\ncontainer: %d passed, 0 failed\n' "$passed"
