package plugin

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
)

func TestParseConfig(t *testing.T) {
	tests := []struct {
		name    string
		json    string
		want    Config
		wantErr string
	}{
		{
			name: "defaults",
			json: `{"gatewaysDns": "fanout-gateway-headless:9090", "route": "orders"}`,
			want: Config{GatewaysDNS: "fanout-gateway-headless:9090", Route: "orders", StableCohort: "stable", CanaryCohort: "canary"},
		},
		{
			name: "everything",
			json: `{"gateways": ["10.0.0.1:9090", "gw-1"], "route": "orders", "stableCohort": "blue", "canaryCohort": "green",
				"tokenFile": "/etc/fanout-admin/token", "tlsCaFile": "/etc/fanout-tls/ca.crt"}`,
			want: Config{Gateways: []string{"10.0.0.1:9090", "gw-1"}, Route: "orders", StableCohort: "blue", CanaryCohort: "green",
				TokenFile: "/etc/fanout-admin/token", TLSCAFile: "/etc/fanout-tls/ca.crt"},
		},
		{name: "missing route", json: `{"gatewaysDns": "gw:9090"}`, wantErr: "route: required"},
		{name: "no gateways", json: `{"route": "orders"}`, wantErr: "gateways or gatewaysDns: one is required"},
		{name: "both", json: `{"route": "orders", "gateways": ["a:1"], "gatewaysDns": "b:2"}`, wantErr: "set one, not both"},
		{name: "a bad port", json: `{"route": "orders", "gateways": ["gw:http"]}`, wantErr: "gateways[0]"},
		{name: "one cohort twice", json: `{"route": "orders", "gatewaysDns": "gw", "canaryCohort": "stable"}`, wantErr: "stableCohort and canaryCohort"},
		{name: "a misspelt field", json: `{"route": "orders", "gatewayDns": "gw"}`, wantErr: `unknown field "gatewayDns"`},
		{name: "not JSON", json: `route: orders`, wantErr: "does not parse"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseConfig([]byte(tt.json))
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseConfig = %+v, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("ParseConfig: %v", err)
			}
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ParseConfig = %+v; want %+v", got, tt.want)
			}
		})
	}
}

func rolloutWith(plugins map[string]json.RawMessage) *v1alpha1.Rollout {
	ro := &v1alpha1.Rollout{}
	ro.Spec.Strategy.Canary = &v1alpha1.CanaryStrategy{TrafficRouting: &v1alpha1.RolloutTrafficRouting{Plugins: plugins}}
	return ro
}

func TestConfigFrom(t *testing.T) {
	ro := rolloutWith(map[string]json.RawMessage{Name: json.RawMessage(`{"gatewaysDns": "gw", "route": "orders"}`)})
	cfg, err := ConfigFrom(ro)
	if err != nil || cfg.Route != "orders" {
		t.Fatalf("ConfigFrom = %+v, %v", cfg, err)
	}

	_, err = ConfigFrom(rolloutWith(map[string]json.RawMessage{Name: json.RawMessage(`{"gatewaysDns": "gw"}`)}))
	if err == nil || !strings.Contains(err.Error(), `plugins["fanout-gateway/fanout"]: route: required`) {
		t.Fatalf("a missing route: %v", err)
	}
	_, err = ConfigFrom(rolloutWith(map[string]json.RawMessage{"argoproj-labs/gatewayAPI": json.RawMessage(`{}`)}))
	if err == nil || !strings.Contains(err.Error(), `no spec.strategy.canary.trafficRouting.plugins["fanout-gateway/fanout"]`) {
		t.Fatalf("another plugin's config only: %v", err)
	}
	if _, err := ConfigFrom(&v1alpha1.Rollout{}); err == nil {
		t.Fatal("a Rollout without a canary strategy: no error")
	}
}

func TestSplitHostPort(t *testing.T) {
	tests := []struct{ in, host, port, wantErr string }{
		{in: "gw:9191", host: "gw", port: "9191"},
		{in: "gw", host: "gw", port: "9090"},
		{in: "10.0.0.1", host: "10.0.0.1", port: "9090"},
		{in: "[::1]:9090", host: "::1", port: "9090"},
		{in: "::1", host: "::1", port: "9090"},
		{in: "", wantErr: "empty"},
		{in: ":9090", wantErr: "no host"},
		{in: "gw:0", wantErr: "not a port number"},
	}
	for _, tt := range tests {
		host, port, err := splitHostPort(tt.in)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("splitHostPort(%q) = %q, %q, %v; want an error containing %q", tt.in, host, port, err, tt.wantErr)
			}
			continue
		}
		if err != nil || host != tt.host || port != tt.port {
			t.Errorf("splitHostPort(%q) = %q, %q, %v; want %q, %q", tt.in, host, port, err, tt.host, tt.port)
		}
	}
}
