# Benchmark targets; the main Makefile does `include bench/bench.mk` and defines `deps`
# (which creates .venv and installs the project).
#
#   make bench-quick   ~2 min: HTTP/1.1 direct vs Tulle (without and with two header modifiers;
#                      ten routing rules) vs HAProxy (also with the same ten rules as ACLs) vs
#                      nginx -> bench/results/quick.json
#   make bench         ~15 min: the same, longer, plus h2c and raw TCP, the mTLS and resilience
#                      rows, each saturation figure under a half-CPU quota (ADR 0077), then
#                      bench.netns -> bench/results/full.json
#                      and the results section of docs/performance.md
#   make bench-profile py-spy on Tulle under wrk: hottest functions -> bench/results/profile.json
#   make bench-controlplane  ~1 min: 1,000 services, 2,000 simulated proxies, one control plane:
#                      apply -> ACK propagation, CPU, RSS -> bench/results/controlplane.json and
#                      its section of docs/performance.md
#   make bench-micro   ~30 s, no sockets: the HTTP/1.1 proxy's Python CPU per request
#   make bench-stat    ~30 s, no sockets: `tulle stat` reports' proxy CPU and frame size, the
#                      control plane's memory per proxy -> bench/results/stat.json
#   make bench-resilience-retries  ~15 s: all endpoints down, 20,000 requests through a real
#                      proxy: retries / requests stays within the retry budget ->
#                      `all_down_retry_ratio` in bench/results/resilience.json (keys merged)
#   make bench-resilience-cpu  ~3 min: three quick runs of Tulle with peak-EWMA, retries and
#                      limits vs HAProxy with leastconn, retries and maxconn/queue over the same
#                      two origins, and tulle-retry vs tulle (the retry budget on a healthy
#                      path): medians and spread -> `resilience_cpu` in
#                      bench/results/resilience.json (`make bench` measures both rows once)
#   make bench-cli     ~30 s: `tulle get` as a whole process against a running control plane,
#                      beside `python -c pass` and a bare urllib GET -> bench/results/cli.json
#   make bench-idle    ~2 min: p99 at 1,000 req/s with and without 8,000 idle keep-alive
#                      connections, Tulle vs HAProxy -> bench/results/idle.json (ADR 0085;
#                      `make bench` runs it too)
#   make bench-mtls    ~40 s: two hops over mTLS vs two plaintext hops vs HAProxy's two TLS
#                      hops, and new mTLS handshakes per second -> bench/results/mtls.json
#                      (`make bench` measures the same row in its full run)

BENCH_PY ?= .venv/bin/python
BENCH_PEERS ?= tulle,tulle-filters,tulle-routes,haproxy,haproxy-routes,nginx,relay
BENCH_MTLS_PEERS ?= tulle-mtls,tulle-2hop,haproxy-tls
BENCH_RESILIENCE_PEERS ?= tulle-retry,tulle-resilience,haproxy-resilience
BENCH_TELEMETRY_PEERS ?= tulle-telemetry

.PHONY: bench bench-quick bench-profile bench-setup bench-controlplane bench-micro bench-mtls bench-idle \
	bench-resilience-retries bench-resilience-cpu bench-stat bench-cli

bench-setup:
	bash bench/setup.sh

bench-quick: deps bench-setup native
	$(BENCH_PY) -m bench.run --mode quick --peers $(BENCH_PEERS) --json bench/results/quick.json

bench: deps bench-setup native
	$(BENCH_PY) -m bench.run --mode full \
		--peers $(BENCH_PEERS),$(BENCH_MTLS_PEERS),$(BENCH_RESILIENCE_PEERS),$(BENCH_TELEMETRY_PEERS) \
		--json bench/results/full.json --doc docs/performance.md \
		--mtls-json bench/results/mtls.json
	$(BENCH_PY) -m bench.netns --rounds 3 --json bench/results/netns.json
	$(BENCH_PY) -m bench.idle_connections --rounds 3 --json bench/results/idle.json

bench-idle: deps bench-setup native
	$(BENCH_PY) -m bench.idle_connections --rounds 3 --json bench/results/idle.json

bench-mtls: deps bench-setup
	$(BENCH_PY) -m bench.run --mode quick --peers $(BENCH_MTLS_PEERS) \
		--json bench/results/mtls-quick.json --mtls-json bench/results/mtls.json

bench-resilience-cpu: deps bench-setup
	$(BENCH_PY) -m bench.resilience_cpu --runs 3 --json bench/results/resilience.json

bench-profile: deps bench-setup native
	test -x $(dir $(BENCH_PY))py-spy || $(BENCH_PY) -m pip install -q 'py-spy>=0.3.14,<0.5'
	$(BENCH_PY) -m bench.profile --seconds 10

bench-micro: deps native
	$(BENCH_PY) -m bench.micro_http1

bench-stat: deps
	$(BENCH_PY) -m bench.micro_stat > bench/results/stat.json
	cat bench/results/stat.json

bench-controlplane: deps
	$(BENCH_PY) -m bench.controlplane --json bench/results/controlplane.json \
		--doc docs/performance.md

## The CA's CSR signing rate on one core -> bench/results/mtls.json (ca_signs_per_s).
.PHONY: bench-ca
bench-ca: deps
	$(BENCH_PY) -m bench.ca --json bench/results/mtls.json

# Issue 10's resilience scenarios, each at >= 20,000 requests; every scenario merges its own
# keys into bench/results/resilience.json (one line per scenario: add yours below).
.PHONY: bench-resilience bench-resilience-retries bench-global-limit
bench-resilience: deps
	$(BENCH_PY) -m bench.slow_endpoint --requests 20000 --concurrency 16
	$(BENCH_PY) -m bench.one_down --requests 20000 --json bench/results/resilience.json
	$(BENCH_PY) -m bench.resilience_retries --requests 20000 --json bench/results/resilience.json
	$(BENCH_PY) -m bench.global_limit
	$(BENCH_PY) -m bench.bulkhead --requests 20000 --json bench/results/resilience.json

bench-resilience-retries: deps
	$(BENCH_PY) -m bench.resilience_retries --requests 20000 --json bench/results/resilience.json

## Issue 10's global-limit scenario at scale (two proxies, one redis-server, 20,000 requests)
## -> bench/results/resilience.json (global_limit_error_ratio); one of bench-resilience's.
bench-global-limit: deps
	$(BENCH_PY) -m bench.global_limit

bench-cli: deps
	$(BENCH_PY) -m bench.cli > bench/results/cli.json.tmp && mv bench/results/cli.json.tmp bench/results/cli.json
	cat bench/results/cli.json
# make bench-tap: ~10 s, no sockets: live tap's cost per request in the proxy (none running, a
# tap that does not match, one that records, one over its rate) -> bench/results/tap.json
.PHONY: bench-tap
bench-tap: deps
	$(BENCH_PY) -m bench.micro_tap > bench/results/tap.json
	cat bench/results/tap.json
## Issue 11's full path in network namespaces (root): client pod -> sidecar -> mTLS -> sidecar
## -> server pod, and the same through two node agents, vs no mesh, three rotating rounds
## -> bench/results/netns.json (`make bench` runs it after the one-hop rows).
.PHONY: bench-netns
bench-netns: deps bench-setup
	$(BENCH_PY) -m bench.netns --rounds 3 --json bench/results/netns.json

## Issue 13's HTTP/2 figures: gRPC unary and h2c against HAProxy in ABAB rounds (median of 3),
## Tulle's RSS after 100,000 gRPC calls on one connection -> bench/results/h2.json; and the
## codec alone, h2 against libnghttp2 (ADR 0051).
.PHONY: bench-h2 bench-micro-h2
bench-h2: deps
	$(BENCH_PY) -m bench.h2_rounds --rss --json bench/results/h2.json

bench-micro-h2: deps
	$(BENCH_PY) -m bench.micro_h2

## Issue 13 items 2-3 (ADR 0052): the compiled and pure-Python proxies and an `auto` listener vs
## HAProxy, keep-alive and Connection: close, ABAB rounds -> bench/results/hot_path.json
.PHONY: bench-hot-path
bench-hot-path: deps bench-setup native
	$(BENCH_PY) -m bench.hot_path --json bench/results/hot_path.json
