#!/usr/bin/env bash
# kind-e2e.sh: Ambit on a kind cluster next to Istio's control plane, then the waypoint walkthrough of
# test/e2e/kube/walkthrough_test.go as kubectl and ambitctl commands, with the path of every request checked in
# Ambit's access logs, and istioctl ztunnel-config read live from the agents (TestIstioctlZtunnelConfig).
# docs/kubernetes.md explains each step.
#
# NOT RUN IN CI. The project's machines have no container engine, so this script has only been checked with
# `bash -n` and shellcheck, never run end to end. CI runs the same walkthrough on a real control plane (etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler, istiod) with a network-namespace kubelet:
# `make test-e2e-kube`. Things kind has and that tier does not: a real kubelet and containerd, kindnet,
# kube-proxy, a released istioctl. If a step fails here, please report it.
#
# Needs: docker, kind, kubectl, helm, istioctl and go (builds ambitctl) on a Linux host. The kind nodes share its
# kernel: eBPF capture needs 6.6+, otherwise Ambit uses nftables TPROXY (modules nf_tproxy and nft_socket).
# CI tests istiod from Istio master of 2026-08-27 (1.31-dev); use an istioctl of 1.31 or later.
#
# Usage: hack/kind-e2e.sh [all|up|walkthrough|app|cross-namespace|down]
#   all (default)    up, then walkthrough; the cluster is left running
#   up               kind cluster (1 control plane, 2 workers), images, Gateway API CRDs, istiod, Ambit
#   walkthrough      the walkthrough against the kind cluster (kubeconfig in the work directory)
#   app              print the bookinfo-like application (NODE0 and NODE1, when set, pin pods to nodes)
#   cross-namespace  print the objects of the cross-namespace step
#   down             delete the kind cluster and the work directory
# Environment: KIND_CLUSTER (default ambit), AMBIT_TAG (image tag, default kind), GATEWAY_API_VERSION
# (default v1.6.0, the version CI uses), AMBIT_KIND_DIR (work directory, default $TMPDIR/ambit-kind-$KIND_CLUSTER).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
CLUSTER=${KIND_CLUSTER:-ambit}
TAG=${AMBIT_TAG:-kind}
GATEWAY_API_VERSION=${GATEWAY_API_VERSION:-v1.6.0}
WORK=${AMBIT_KIND_DIR:-${TMPDIR:-/tmp}/ambit-kind-$CLUSTER}
AGENT_IMAGE=ghcr.io/ambit-mesh/ambit:$TAG
WAYPOINT_IMAGE=ghcr.io/ambit-mesh/ambit-waypoint:$TAG
ECHO_IMAGE=ambit-e2e/echo:1 # the name the e2e tier uses
AMBITCTL=$WORK/bin/ambitctl
export KUBECONFIG=$WORK/kubeconfig

say() { printf '\n== %s\n' "$*"; }
fail() {
	printf 'FAIL: %s\n' "$*" >&2
	exit 1
}
need() {
	local c
	for c in "$@"; do
		command -v "$c" >/dev/null || fail "$c not found on PATH"
	done
}
k() { kubectl "$@"; }
kind_exists() {
	local clusters
	clusters=$(kind get clusters 2>/dev/null || true)
	grep -qx "$CLUSTER" <<<"$clusters"
}
ambitctl() { "$AMBITCTL" "$@"; }

# wait_for SECONDS WHAT COMMAND...: runs COMMAND every second until it succeeds, or fails after SECONDS.
wait_for() {
	local secs=$1 what=$2 deadline
	shift 2
	deadline=$((SECONDS + secs))
	until "$@" >/dev/null 2>&1; do
		((SECONDS < deadline)) || fail "timed out after ${secs}s waiting for $what"
		sleep 1
	done
}

# contains TEXT WANT WHAT: fails unless TEXT contains WANT.
contains() {
	[[ $1 == *"$2"* ]] || fail "$3: want a line with '$2' in:"$'\n'"$1"
}

up() {
	need docker kind kubectl helm istioctl go
	mkdir -p "$WORK/bin"

	say "kind cluster $CLUSTER (kubeconfig $KUBECONFIG)"
	if kind_exists; then
		kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
	else
		kind create cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG" --config - <<-EOF
			kind: Cluster
			apiVersion: kind.x-k8s.io/v1alpha4
			nodes:
			- role: control-plane
			- role: worker
			- role: worker
		EOF
	fi

	say "images: $AGENT_IMAGE, $WAYPOINT_IMAGE, $ECHO_IMAGE"
	docker build -t "$AGENT_IMAGE" --build-arg VERSION="$TAG" "$ROOT"
	# The waypoint image: the same binary without file capabilities (istiod's waypoint pods drop every
	# capability, and the kernel refuses to exec a binary whose file capabilities it cannot grant).
	docker build --target waypoint -t "$WAYPOINT_IMAGE" --build-arg VERSION="$TAG" "$ROOT"
	# The e2e tier's test server (test/e2e/kube/echo), with curl for the client pod.
	docker build -t "$ECHO_IMAGE" -f - "$ROOT" <<-'EOF'
		FROM golang:1.26-bookworm AS build
		WORKDIR /src
		COPY go.mod go.sum ./
		RUN go mod download
		COPY . .
		RUN CGO_ENABLED=0 go build -trimpath -o /out/echo-server ./test/e2e/kube/echo
		FROM debian:bookworm-slim
		RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates \
		 && rm -rf /var/lib/apt/lists/*
		COPY --from=build /out/echo-server /usr/local/bin/echo-server
		ENTRYPOINT ["/usr/local/bin/echo-server"]
	EOF
	kind load docker-image --name "$CLUSTER" "$AGENT_IMAGE" "$WAYPOINT_IMAGE" "$ECHO_IMAGE"

	say "ambitctl ($AMBITCTL)"
	(cd "$ROOT" && go build -o "$AMBITCTL" ./cmd/ambitctl)

	say "Gateway API CRDs $GATEWAY_API_VERSION"
	if ! k get crd gateways.gateway.networking.k8s.io >/dev/null 2>&1; then
		k apply --server-side -f "https://github.com/kubernetes-sigs/gateway-api/releases/download/$GATEWAY_API_VERSION/standard-install.yaml"
	fi

	say "istiod: ambient profile without ztunnel and without istio-cni (Ambit does both jobs)"
	istioctl version --remote=false || true
	istioctl install -y --set profile=ambient --set components.ztunnel.enabled=false --set components.cni.enabled=false
	local env
	env=$(k -n istio-system get deploy istiod -o jsonpath='{range .spec.template.spec.containers[0].env[*]}{.name}={.value}{"\n"}{end}')
	grep -qx 'PILOT_ENABLE_AMBIENT=true' <<<"$env" || fail "istiod lacks PILOT_ENABLE_AMBIENT=true"
	grep -qx 'CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel' <<<"$env" || fail "istiod lacks CA_TRUSTED_NODE_ACCOUNTS=istio-system/ztunnel"
	# Ambit's DaemonSet takes ztunnel's name (the chart's ztunnelNames): a ztunnel DaemonSet that is not Ambit's
	# is Istio's own.
	local ds
	ds=$(k -n istio-system get daemonset ztunnel -o jsonpath='{.metadata.labels.app\.kubernetes\.io/name}' 2>/dev/null || echo none)
	if [[ $ds != none && $ds != ambit ]] || k -n istio-system get daemonset istio-cni-node >/dev/null 2>&1; then
		fail "ztunnel or istio-cni is installed: remove them before installing Ambit"
	fi

	say "Ambit (helm install charts/ambit)"
	helm upgrade --install ambit "$ROOT/charts/ambit" -n istio-system \
		--set image.tag="$TAG" --set waypoint.image.tag="$TAG" --wait --timeout 5m
	k -n istio-system rollout status daemonset/ztunnel --timeout=180s
	k -n istio-system get pods -l app=ztunnel -o wide
	local pod ready
	for pod in $(k -n istio-system get pods -l app=ztunnel -o jsonpath='{.items[*].metadata.name}'); do
		ready=$(k get --raw "/api/v1/namespaces/istio-system/pods/$pod:15021/proxy/healthz/ready")
		[[ $ready == ready ]] || fail "$pod readiness: $ready"
		contains "$(k get --raw "/api/v1/namespaces/istio-system/pods/$pod:15020/proxy/stats/prometheus")" \
			"ambit_enrolled_pods" "$pod metrics"
		printf '  ok   %s: ready, metrics on 15020\n' "$pod"
	done
}

# app prints the bookinfo-like application of the e2e tier: echo servers answering "<pod name> saw <client IP>"
# for productpage, details, ratings and reviews v1/v2/v3 on port 9080, and a client. reviews-v2 and the client
# go to different nodes, so that at least one path crosses nodes.
app() {
	local spec app version node selector
	for spec in productpage:v1:1 details:v1:0 ratings:v1:1 reviews:v1:0 reviews:v2:1 reviews:v3:0 client:v1:0; do
		IFS=: read -r app version node <<<"$spec"
		if [[ $node == 0 ]]; then node=${NODE0:-}; else node=${NODE1:-}; fi
		selector=""
		if [[ -n $node ]]; then selector="nodeSelector: {kubernetes.io/hostname: $node}"; fi
		cat <<-EOF
			---
			apiVersion: v1
			kind: ServiceAccount
			metadata: {name: bookinfo-$app, namespace: default}
			---
			apiVersion: apps/v1
			kind: Deployment
			metadata: {name: $app-$version, namespace: default, labels: {app: $app, version: $version}}
			spec:
			  replicas: 1
			  selector: {matchLabels: {app: $app, version: $version}}
			  template:
			    metadata: {labels: {app: $app, version: $version}}
			    spec:
			      serviceAccountName: bookinfo-$app
			      $selector
			      containers:
			      - name: $app
			        image: $ECHO_IMAGE
			        args: [--port=9080]
			        env:
			        - name: POD_NAME
			          valueFrom: {fieldRef: {fieldPath: metadata.name}}
			        ports: [{containerPort: 9080, name: http}]
			        readinessProbe: {tcpSocket: {port: 9080}, periodSeconds: 1}
		EOF
	done
	for app in productpage details ratings reviews; do
		cat <<-EOF
			---
			apiVersion: v1
			kind: Service
			metadata: {name: $app, namespace: default, labels: {app: $app, service: $app}}
			spec:
			  selector: {app: $app}
			  ports: [{name: http, port: 9080, targetPort: 9080}]
		EOF
	done
}

# cross_namespace prints the cross-namespace part: a waypoint in common-infrastructure admitting namespaces
# labelled waypoint-access=allowed, a ServiceEntry in default using it, and one in denied-ns (not allowed).
cross_namespace() {
	cat <<-EOF
		apiVersion: v1
		kind: Namespace
		metadata: {name: common-infrastructure}
		---
		apiVersion: v1
		kind: Namespace
		metadata: {name: denied-ns, labels: {istio.io/dataplane-mode: ambient}}
		---
		apiVersion: gateway.networking.k8s.io/v1
		kind: Gateway
		metadata:
		  name: egress-waypoint
		  namespace: common-infrastructure
		  labels: {istio.io/waypoint-for: service}
		spec:
		  gatewayClassName: istio-waypoint
		  listeners:
		  - name: mesh
		    port: 15008
		    protocol: HBONE
		    allowedRoutes:
		      namespaces:
		        from: Selector
		        selector:
		          matchLabels: {waypoint-access: allowed}
		---
		apiVersion: networking.istio.io/v1
		kind: ServiceEntry
		metadata:
		  name: details-external
		  namespace: default
		  labels:
		    istio.io/use-waypoint: egress-waypoint
		    istio.io/use-waypoint-namespace: common-infrastructure
		spec:
		  hosts: [details.external.example]
		  addresses: [240.240.0.10]
		  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
		  location: MESH_INTERNAL
		  resolution: STATIC
		  workloadSelector: {labels: {app: details}}
		---
		apiVersion: networking.istio.io/v1
		kind: ServiceEntry
		metadata:
		  name: ratings-external
		  namespace: denied-ns
		  labels:
		    istio.io/use-waypoint: egress-waypoint
		    istio.io/use-waypoint-namespace: common-infrastructure
		spec:
		  hosts: [ratings.external.example]
		  addresses: [240.240.0.11]
		  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 9080}]
		  location: MESH_INTERNAL
		  resolution: STATIC
		  workloadSelector: {labels: {app: ratings}}
		---
		apiVersion: apps/v1
		kind: Deployment
		metadata: {name: ratings-v1, namespace: denied-ns, labels: {app: ratings, version: v1}}
		spec:
		  replicas: 1
		  selector: {matchLabels: {app: ratings}}
		  template:
		    metadata: {labels: {app: ratings, version: v1}}
		    spec:
		      containers:
		      - name: ratings
		        image: $ECHO_IMAGE
		        args: [--port=9080]
		        env:
		        - name: POD_NAME
		          valueFrom: {fieldRef: {fieldPath: metadata.name}}
		        readinessProbe: {tcpSocket: {port: 9080}, periodSeconds: 1}
	EOF
}

pod_ip() { k -n default get pod -l "$1" -o jsonpath='{.items[0].status.podIP}'; }
pod_name() { k -n "$1" get pod -l "$2" -o jsonpath='{.items[0].metadata.name}'; }
svc_ip() { k -n default get svc "$1" -o jsonpath='{.spec.clusterIP}'; }
vip() { # SERVICE: its ClusterIP, read once by walkthrough
	local v="VIP_$1"
	printf '%s' "${!v}"
}
agent_on() { k -n istio-system get pod -l app=ztunnel --field-selector "spec.nodeName=$1" -o jsonpath='{.items[0].metadata.name}'; }

# request TARGET: one HTTP request from the client pod to TARGET (ip:port) on a new connection. Prints the
# response body, then the connection's local address (the key of its line in the client agent's access log).
request() {
	k -n default exec deploy/client-v1 -c client -- \
		curl -sS --fail --max-time 10 -w '\n%{local_ip}:%{local_port}\n' "http://$1/" | sed '/^$/d'
}

# access_line AGENT LOCAL: the agent's "connection complete" line of the outbound connection from LOCAL (written
# when the connection closes, so it is polled for a few seconds).
access_line() {
	local i line
	for i in $(seq 1 20); do
		line=$(k -n istio-system logs "$1" -c ambit --since=10m | grep -F 'msg="connection complete"' |
			grep -F " src.addr=$2 " | grep -F ' direction=outbound ' | tail -n 1 || true)
		if [[ -n $line ]]; then
			printf '%s\n' "$line"
			return 0
		fi
		[[ $i == 20 ]] || sleep 0.5
	done
	return 1
}

# field KEY LINE prints the value of KEY in a log/slog text line (empty when absent).
field() {
	local re=" ${1//./\\.}=([^ ]*)"
	if [[ " $2" =~ $re ]]; then printf '%s' "${BASH_REMATCH[1]}"; fi
}

# expect_path TARGET WAYPOINT sends requests from the client to TARGET until the client agent's access-log line
# for one of them names WAYPOINT ("" = none: straight over HBONE to the destination's node agent), for up to
# 30 s while istiod's update propagates. It sets BODY (the response) and LINE (the access-log line).
expect_path() {
	local target=$1 want=$2 deadline=$((SECONDS + 30)) out laddr got=""
	BODY="" LINE=""
	while :; do
		if out=$(request "$target" 2>&1); then
			BODY=$(head -n 1 <<<"$out")
			laddr=$(tail -n 1 <<<"$out")
			if LINE=$(access_line "$CLIENT_AGENT" "$laddr"); then
				got=$(field waypoint "$LINE")
				if [[ $got == "$want" && -n $(field dst.hbone_addr "$LINE") ]]; then
					printf '  ok   %-21s waypoint=%-40s answered: %s\n' "$target" "${want:-none}" "$BODY"
					return 0
				fi
			fi
		fi
		((SECONDS < deadline)) || fail "GET $target: want waypoint ${want:-none}, got ${got:-none}; output: $out; access log: ${LINE:-none}"
		sleep 1
	done
}

# all_services WAYPOINT: every bookinfo service, by its ClusterIP, goes through WAYPOINT and is answered by its pods.
all_services() {
	local s
	for s in productpage details ratings reviews; do
		expect_path "$(vip "$s"):9080" "$1"
		[[ $BODY == "$s"-* ]] || fail "$s answered by '$BODY'"
		[[ $(field dst.service "$LINE") == "$s.default.svc.cluster.local" ]] || fail "$s: access log $LINE"
	done
}

# waypoint_lines NS GATEWAY [PATTERN]: how many access-log lines the waypoint wrote (matching PATTERN).
waypoint_lines() {
	local logs
	logs=$(k -n "$1" logs "deploy/$2" -c istio-proxy | grep -E 'msg="(request|connection) complete"' || true)
	grep -cF -- "${3:-complete}" <<<"$logs" || true
}

lines_at_least() { [[ $(waypoint_lines "$1" "$2" "${4:-}") -ge $3 ]]; } # NS GATEWAY MIN [PATTERN]

# condition NS SERVICEENTRY FIELD: a field of the ServiceEntry's istio.io/WaypointBound condition.
condition() {
	k -n "$1" get serviceentry "$2" -o jsonpath="{.status.conditions[?(@.type==\"istio.io/WaypointBound\")].$3}"
}
condition_is() { [[ $(condition "$1" "$2" "$3") == "$4" ]]; }

redirection_everywhere() {
	local list
	list=$(k -n default get pods -l 'app in (productpage,details,ratings,reviews,client)' -o jsonpath='{range .items[*]}{.metadata.annotations.ambient\.istio\.io/redirection}{"\n"}{end}')
	[[ $(grep -c . <<<"$list") -ge 7 && $(grep -cvx enabled <<<"$list") == 0 ]]
}

connection_from() { # AGENT POD IP: the agent lists an inbound connection of POD from IP
	local table
	table=$(k -n istio-system exec "$1" -c ambit -- ambitctl node connections "$2.default" --raw --direction inbound)
	grep -qF " $3:" <<<"$table"
}

# ztunnel_config CLIENT_NODE: istioctl ztunnel-config, live (it port-forwards to the agents' admin port as to
# ztunnel's), names the application's workloads, services and the client's certificate (test/e2e/kube:
# TestIstioctlZtunnelConfig checks the same, and every column).
ztunnel_config() {
	local out
	out=$(istioctl ztunnel-config workloads --workload-namespace default)
	contains "$out" "NAMESPACE" "ztunnel-config workloads"
	contains "$out" "$(pod_name default app=client)" "ztunnel-config workloads"
	out=$(istioctl ztunnel-config services --service-namespace default)
	contains "$out" "productpage" "ztunnel-config services"
	out=$(istioctl ztunnel-config certificates --node "$1")
	contains "$out" "spiffe://cluster.local/ns/default/sa/bookinfo-client" "ztunnel-config certificates"
	contains "$(istioctl ztunnel-config policies)" "POLICY NAME" "ztunnel-config policies"
	contains "$(istioctl ztunnel-config connections --node "$1")" "REMOTE TARGET" "ztunnel-config connections"
	echo "  ok   istioctl ztunnel-config workloads, services, certificates, policies, connections"
}

walkthrough() {
	need kubectl istioctl
	if [[ ! -f $KUBECONFIG ]] && kind_exists; then
		mkdir -p "$WORK"
		kind export kubeconfig --name "$CLUSTER" --kubeconfig "$KUBECONFIG"
	fi
	[[ -x $AMBITCTL ]] || (cd "$ROOT" && go build -o "$AMBITCTL" ./cmd/ambitctl)
	if [[ -z ${NODE0:-} ]] && kind_exists; then
		NODE0=$CLUSTER-worker NODE1=$CLUSTER-worker2
	fi

	say "the application in namespace default, labelled ambient"
	k label namespace default istio.io/dataplane-mode=ambient --overwrite
	app | k apply --server-side -f -
	local d
	for d in productpage-v1 details-v1 ratings-v1 reviews-v1 reviews-v2 reviews-v3 client-v1; do
		k -n default rollout status "deployment/$d" --timeout=120s
	done
	wait_for 60 "ambient.istio.io/redirection=enabled on every pod" redirection_everywhere
	CLIENT_AGENT=$(agent_on "$(k -n default get pod -l app=client -o jsonpath='{.items[0].spec.nodeName}')")
	local s
	for s in productpage details ratings reviews; do printf -v "VIP_$s" '%s' "$(svc_ip "$s")"; done
	echo "client's node agent: istio-system/$CLIENT_AGENT"

	say "1. before any waypoint, every service is reached directly over HBONE"
	all_services ""
	ztunnel_config "$(k -n default get pod -l app=client -o jsonpath='{.items[0].spec.nodeName}')"

	say "2. generate and apply a namespace waypoint; istiod deploys it and it is Programmed"
	local gen out want
	gen=$(ambitctl waypoint generate --for service -n default)
	for want in "kind: Gateway" "gatewayClassName: istio-waypoint" "istio.io/waypoint-for: service" "port: 15008" "protocol: HBONE"; do
		contains "$gen" "$want" "waypoint generate"
	done
	printf '%s\n' "$gen" | k apply --server-side -f -
	out=$(ambitctl waypoint apply -n default --wait)
	[[ $out == $'✅ waypoint default/waypoint applied\n✅ waypoint default/waypoint is ready!' ]] || fail "apply --wait printed: $out"
	k -n default rollout status deployment/waypoint --timeout=120s
	contains "$(ambitctl waypoint list -n default)" "waypoint     default      service          True" "waypoint list"
	contains "$(ambitctl waypoint status -n default)" "waypoint     True       Programmed" "waypoint status"
	out=$(k -n default get pod -l gateway.networking.k8s.io/gateway-name=waypoint -o jsonpath='{.items[0].spec.containers[0].image}')
	[[ $out == ghcr.io/ambit-mesh/ambit-waypoint:* ]] || fail "the waypoint runs $out, not ambit waypoint"
	expect_path "$(vip productpage):9080" "" # not enrolled yet: still direct

	say "3. enroll the namespace; every service is reached through the waypoint"
	out=$(ambitctl waypoint apply -n default --enroll-namespace --wait)
	contains "$out" '✅ namespace default labeled with "istio.io/use-waypoint: waypoint"' "apply --enroll-namespace"
	all_services default/waypoint
	wait_for 10 "the waypoint's access log of the client" \
		lines_at_least default waypoint 1 'src.identity=spiffe://cluster.local/ns/default/sa/bookinfo-client'
	expect_path "$(pod_ip app=details):9080" "" # pod-addressed traffic skips a service waypoint

	say "4. a service waypoint on reviews and a workload waypoint on reviews-v2; nothing transits twice"
	ambitctl waypoint apply -n default --name reviews-svc-waypoint --wait
	ambitctl waypoint apply -n default --name reviews-v2-pod-waypoint --for workload --wait
	for d in reviews-svc-waypoint reviews-v2-pod-waypoint; do
		k -n default rollout status "deployment/$d" --timeout=120s
	done
	k -n default label service reviews istio.io/use-waypoint=reviews-svc-waypoint --overwrite
	k -n default label pod -l app=reviews,version=v2 istio.io/use-waypoint=reviews-v2-pod-waypoint --overwrite
	local v2 v2pod before landed=0 i svcwp
	v2=$(pod_ip app=reviews,version=v2)
	v2pod=$(pod_name default app=reviews,version=v2)
	expect_path "$(vip reviews):9080" default/reviews-svc-waypoint
	expect_path "$v2:9080" default/reviews-v2-pod-waypoint
	expect_path "$(pod_ip app=reviews,version=v1):9080" ""
	before=$(waypoint_lines default reviews-v2-pod-waypoint)
	for i in $(seq 1 60); do
		expect_path "$(vip reviews):9080" default/reviews-svc-waypoint >/dev/null
		if [[ $BODY == reviews-v2-* ]]; then landed=$((landed + 1)); fi
		((landed < 2)) || break
	done
	((landed > 0)) || fail "no service request reached reviews-v2 in $i tries"
	echo "  $landed of $i service requests landed on reviews-v2"
	# The service waypoint sent them to reviews-v2 itself, over HBONE to reviews-v2's node agent, which lists the
	# waypoint's connection; the pod waypoint saw none of them.
	wait_for 10 "the service waypoint's requests to reviews-v2" \
		lines_at_least default reviews-svc-waypoint "$landed" " upstream=$v2:9080 "
	svcwp=$(k -n default get pod -l gateway.networking.k8s.io/gateway-name=reviews-svc-waypoint -o jsonpath='{.items[0].status.podIP}')
	wait_for 10 "an inbound connection from the service waypoint on reviews-v2's node" \
		connection_from "$(agent_on "$(k -n default get pod "$v2pod" -o jsonpath='{.spec.nodeName}')")" "$v2pod" "$svcwp"
	sleep 1
	[[ $(waypoint_lines default reviews-v2-pod-waypoint) == "$before" ]] || fail "the pod waypoint carried service-addressed traffic"
	echo "  ok   the pod waypoint carried none of it"

	say "5. waypoint-for workload, all, none, service"
	local pp spec forType svcWP podWP
	pp=$(pod_ip app=productpage)
	for spec in "workload||default/waypoint" "all|default/waypoint|default/waypoint" "none||" "service|default/waypoint|"; do
		IFS='|' read -r forType svcWP podWP <<<"$spec"
		echo "  istio.io/waypoint-for=$forType"
		k -n default label gateway waypoint "istio.io/waypoint-for=$forType" --overwrite
		expect_path "$(vip productpage):9080" "$svcWP"
		expect_path "$pp:9080" "$podWP"
	done

	say "6. a cross-namespace waypoint used by a ServiceEntry, and a denied attachment"
	k label namespace default waypoint-access=allowed --overwrite
	cross_namespace | k apply --server-side -f -
	k -n denied-ns rollout status deployment/ratings-v1 --timeout=120s
	wait_for 60 "istiod's egress-waypoint Deployment" k -n common-infrastructure get deployment egress-waypoint
	k -n common-infrastructure rollout status deployment/egress-waypoint --timeout=120s
	contains "$(ambitctl waypoint status -n common-infrastructure --name egress-waypoint)" \
		"egress-waypoint     True       Programmed" "waypoint status"
	expect_path 240.240.0.10:80 common-infrastructure/egress-waypoint
	[[ $BODY == details-* ]] || fail "the ServiceEntry was answered by '$BODY'"
	wait_for 30 "WaypointBound on default/details-external" condition_is default details-external message \
		"Successfully attached to waypoint common-infrastructure/egress-waypoint"
	wait_for 30 "AttachmentDenied on denied-ns/ratings-external" condition_is denied-ns ratings-external reason AttachmentDenied
	echo "  ok   denied-ns/ratings-external: $(condition denied-ns ratings-external message)"
	expect_path 240.240.0.11:80 ""

	say "7. cleanup restores direct paths"
	out=$(ambitctl waypoint delete --all -n default)
	for want in waypoint reviews-svc-waypoint reviews-v2-pod-waypoint; do
		contains "$out" "waypoint default/$want deleted" "waypoint delete --all"
	done
	ambitctl waypoint delete --all -n common-infrastructure
	k label namespace default istio.io/use-waypoint-
	k -n default label service reviews istio.io/use-waypoint-
	k -n default label pod -l app=reviews,version=v2 istio.io/use-waypoint-
	k -n default delete serviceentry details-external
	all_services ""
	expect_path "$v2:9080" ""
	out=$(ambitctl waypoint list -n default)
	[[ $out == "No waypoints found." ]] || fail "waypoint list after delete --all: $out"

	say "walkthrough passed"
	echo "Explore: export KUBECONFIG=$KUBECONFIG; delete the cluster: $0 down"
}

down() {
	need kind
	kind delete cluster --name "$CLUSTER"
	rm -rf "$WORK"
}

case ${1:-all} in
all)
	up
	walkthrough
	;;
up) up ;;
walkthrough) walkthrough ;;
app) app ;;
cross-namespace) cross_namespace ;;
down) down ;;
*) fail "usage: $0 [all|up|walkthrough|app|cross-namespace|down]" ;;
esac
