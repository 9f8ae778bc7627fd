package plugin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
)

// Name is the plugin's name: its key under the Rollout's
// spec.strategy.canary.trafficRouting.plugins and its name in the argo-rollouts-config
// ConfigMap's trafficRouterPlugins.
const Name = "fanout-gateway/fanout"

// DefaultAdminPort is the gateway's admin port (server.admin_listen), used when an address
// in gateways or gatewaysDns names none.
const DefaultAdminPort = "9090"

// Config is the plugin's configuration, per Rollout, from
// spec.strategy.canary.trafficRouting.plugins["fanout-gateway/fanout"]:
//
//	trafficRouting:
//	  plugins:
//	    fanout-gateway/fanout:
//	      gatewaysDns: fanout-gateway-headless.fanout.svc.cluster.local:9090
//	      route: orders
//	      tokenFile: /etc/fanout-admin/token
//
// The zero value of an optional field means its default, as each field says.
type Config struct {
	// Gateways are the admin addresses (host:port; the port defaults to 9090) of every
	// gateway replica. Exactly one of Gateways and GatewaysDNS is set.
	Gateways []string `json:"gateways,omitempty"`
	// GatewaysDNS is a name that resolves to every replica, host:port (the port defaults
	// to 9090): the gateway's headless Service. It is resolved again on every call, so
	// replicas that come and go are followed.
	GatewaysDNS string `json:"gatewaysDns,omitempty"`
	// Route is the gateway route (routes[].name) whose cohort weights the Rollout drives.
	// Required.
	Route string `json:"route"`
	// StableCohort and CanaryCohort are the values of the route's split label that the
	// Rollout's stableMetadata and canaryMetadata give the pods ("stable" and "canary"
	// when empty).
	StableCohort string `json:"stableCohort,omitempty"`
	CanaryCohort string `json:"canaryCohort,omitempty"`
	// TokenFile holds the gateway's admin bearer token (server.admin_token_file), sent as
	// `authorization: Bearer <token>`; SetWeights needs it. Read on every call, so a
	// rotated Secret is picked up. Empty: no token is sent.
	TokenFile string `json:"tokenFile,omitempty"`
	// TLSCAFile is the CA (PEM) that signed the admin port's certificate
	// (server.admin_tls). Empty: plaintext. With gatewaysDns the certificate is checked
	// against that name, with gateways against each address's host.
	TLSCAFile string `json:"tlsCaFile,omitempty"`
}

// ConfigFrom reads the plugin's configuration from a Rollout, with defaults applied and
// checked. The error names the field (or the place in the Rollout) that is wrong.
func ConfigFrom(ro *v1alpha1.Rollout) (Config, error) {
	if ro == nil || ro.Spec.Strategy.Canary == nil || ro.Spec.Strategy.Canary.TrafficRouting == nil {
		return Config{}, fmt.Errorf("rollout has no spec.strategy.canary.trafficRouting.plugins[%q]", Name)
	}
	raw, ok := ro.Spec.Strategy.Canary.TrafficRouting.Plugins[Name]
	if !ok {
		return Config{}, fmt.Errorf("rollout has no spec.strategy.canary.trafficRouting.plugins[%q]", Name)
	}
	cfg, err := ParseConfig(raw)
	if err != nil {
		return Config{}, fmt.Errorf("spec.strategy.canary.trafficRouting.plugins[%q]: %w", Name, err)
	}
	return cfg, nil
}

// ParseConfig parses the plugin's JSON configuration, applies the defaults and checks it.
// Unknown fields are refused, so a misspelt one is not silently ignored.
func ParseConfig(raw []byte) (Config, error) {
	var cfg Config
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&cfg); err != nil {
		return Config{}, fmt.Errorf("does not parse: %w", err)
	}
	if cfg.StableCohort == "" {
		cfg.StableCohort = "stable"
	}
	if cfg.CanaryCohort == "" {
		cfg.CanaryCohort = "canary"
	}
	if err := cfg.check(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

func (c Config) check() error {
	if c.Route == "" {
		return errors.New("route: required (the gateway route whose cohort weights the Rollout drives)")
	}
	switch {
	case len(c.Gateways) == 0 && c.GatewaysDNS == "":
		return errors.New("gateways or gatewaysDns: one is required (the gateway replicas' admin addresses)")
	case len(c.Gateways) > 0 && c.GatewaysDNS != "":
		return errors.New("gateways and gatewaysDns: set one, not both")
	}
	for i, g := range c.Gateways {
		if _, _, err := splitHostPort(g); err != nil {
			return fmt.Errorf("gateways[%d]: %w", i, err)
		}
	}
	if c.GatewaysDNS != "" {
		if _, _, err := splitHostPort(c.GatewaysDNS); err != nil {
			return fmt.Errorf("gatewaysDns: %w", err)
		}
	}
	if c.StableCohort == c.CanaryCohort {
		return fmt.Errorf("stableCohort and canaryCohort: both are %q; they must differ", c.StableCohort)
	}
	return nil
}

// splitHostPort splits host[:port], the port defaulting to the admin port.
func splitHostPort(address string) (host, port string, err error) {
	if address == "" {
		return "", "", errors.New("empty address")
	}
	host, port, err = net.SplitHostPort(address)
	if err != nil {
		// No port (or an IPv6 address without brackets and port).
		host, port = address, DefaultAdminPort
		if net.ParseIP(address) == nil && strings.Contains(address, ":") {
			return "", "", fmt.Errorf("%q is not host:port", address)
		}
	}
	if host == "" {
		return "", "", fmt.Errorf("%q has no host", address)
	}
	if n, err := strconv.Atoi(port); err != nil || n <= 0 || n > 65535 {
		return "", "", fmt.Errorf("%q: port %q is not a port number", address, port)
	}
	return host, port, nil
}
