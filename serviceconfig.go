package notnets

import (
	"encoding/json"
	"fmt"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/notnets/notnets/internal/balance"
)

// policyFromServiceConfig returns the balancing policy a gRPC service
// config in JSON names: the first known entry of loadBalancingConfig, else
// loadBalancingPolicy, else LeastRequest.
func policyFromServiceConfig(js string) (balance.Policy, error) {
	var sc struct {
		LoadBalancingConfig []map[string]json.RawMessage `json:"loadBalancingConfig"`
		LoadBalancingPolicy string                       `json:"loadBalancingPolicy"`
	}
	if err := json.Unmarshal([]byte(js), &sc); err != nil {
		return 0, status.Errorf(codes.InvalidArgument, "notnets: service config: %v", err)
	}
	for _, entry := range sc.LoadBalancingConfig {
		for name := range entry {
			if p, ok := policyNamed(name); ok {
				return p, nil
			}
		}
	}
	if sc.LoadBalancingPolicy != "" {
		if p, ok := policyNamed(sc.LoadBalancingPolicy); ok {
			return p, nil
		}
		return 0, status.Errorf(codes.InvalidArgument, "notnets: service config: unknown loadBalancingPolicy %q", sc.LoadBalancingPolicy)
	}
	if len(sc.LoadBalancingConfig) > 0 {
		return 0, status.Error(codes.InvalidArgument, fmt.Sprintf("notnets: service config: no known policy in loadBalancingConfig (known: %s, %s, %s)", balance.LeastLoad, balance.RoundRobin, balance.PickFirst))
	}
	return balance.LeastLoad, nil
}

func policyNamed(name string) (balance.Policy, bool) {
	for _, p := range []balance.Policy{balance.LeastLoad, balance.RoundRobin, balance.PickFirst} {
		if p.String() == name {
			return p, true
		}
	}
	return 0, false
}
