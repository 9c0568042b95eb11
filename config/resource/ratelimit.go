package resource

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gwv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// RateLimitGroup is the API group of LocalRateLimitPolicy.
const RateLimitGroup = "policy.ambit.dev"

// LocalRateLimitPolicy (policy.ambit.dev/v1alpha1) is Ambit's local rate limit for waypoints: a token
// bucket, kept by each waypoint instance, shared by every request to its targets. Istio has no
// supported rate-limit API on waypoints (EnvoyFilter is unsupported there), so Ambit follows Gateway
// API policy attachment (GEP-713): the policy names what it applies to with targetRefs, in its own
// namespace: a Service or ServiceEntry (every request to it through the waypoint), an HTTPRoute or
// GRPCRoute (requests that rule selects), or the waypoint Gateway (every request it serves). A
// request over the limit gets 429 with x-ratelimit-limit, x-ratelimit-remaining, x-ratelimit-reset
// and retry-after, and the response flag RL.
//
//	apiVersion: policy.ambit.dev/v1alpha1
//	kind: LocalRateLimitPolicy
//	metadata: {name: reviews-limit, namespace: bookinfo}
//	spec:
//	  targetRefs: [{kind: Service, name: reviews}]
//	  tokenBucket: {maxTokens: 10, tokensPerFill: 10, fillInterval: 1s}
type LocalRateLimitPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              LocalRateLimitPolicySpec `json:"spec"`
}

// LocalRateLimitPolicySpec is the desired limit.
type LocalRateLimitPolicySpec struct {
	// TargetRefs are the objects limited (group "" or core for Service, networking.istio.io for
	// ServiceEntry, gateway.networking.k8s.io for Gateway, HTTPRoute and GRPCRoute).
	TargetRefs []gwv1.LocalPolicyTargetReference `json:"targetRefs"`
	// TokenBucket is Envoy's local rate limit bucket: it holds at most MaxTokens, starts full, and gains
	// TokensPerFill (default MaxTokens) every FillInterval; each request takes one token.
	TokenBucket TokenBucket `json:"tokenBucket"`
}

// TokenBucket configures a token bucket.
type TokenBucket struct {
	MaxTokens     int64  `json:"maxTokens"`
	TokensPerFill *int64 `json:"tokensPerFill,omitempty"`
	// FillInterval is a Go duration ("1s", "100ms"), at least 10ms.
	FillInterval string `json:"fillInterval"`
}
