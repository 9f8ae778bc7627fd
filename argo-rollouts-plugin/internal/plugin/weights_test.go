package plugin

import (
	"strings"
	"testing"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
)

func TestWeightsFor(t *testing.T) {
	defaults := Config{Route: "orders", StableCohort: "stable", CanaryCohort: "canary"}
	named := Config{Route: "orders", StableCohort: "blue", CanaryCohort: "green"}
	experiment := []v1alpha1.WeightDestination{{ServiceName: "orders-exp", Weight: 5}}
	tests := []struct {
		name       string
		cfg        Config
		desired    int32
		additional []v1alpha1.WeightDestination
		want       Weights
		wantErr    string
	}{
		{name: "0 is all stable", cfg: defaults, desired: 0, want: Weights{"stable": 100, "canary": 0}},
		{name: "a step", cfg: defaults, desired: 20, want: Weights{"stable": 80, "canary": 20}},
		{name: "1 percent", cfg: defaults, desired: 1, want: Weights{"stable": 99, "canary": 1}},
		{name: "100 is all canary", cfg: defaults, desired: 100, want: Weights{"stable": 0, "canary": 100}},
		{name: "cohorts named in the config", cfg: named, desired: 50, want: Weights{"blue": 50, "green": 50}},
		{name: "below 0", cfg: defaults, desired: -1, wantErr: "desired weight -1 is outside 0..100"},
		{name: "above 100", cfg: defaults, desired: 101, wantErr: "desired weight 101 is outside 0..100"},
		{name: "an experiment's weighted destination", cfg: defaults, desired: 20, additional: experiment,
			wantErr: "additional destinations (orders-exp=5) are not supported"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := WeightsFor(tt.cfg, tt.desired, tt.additional)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("WeightsFor(%d) = %v, %v; want an error containing %q", tt.desired, got, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("WeightsFor(%d): %v", tt.desired, err)
			}
			if !got.Same(tt.want) || len(got) != len(tt.want) {
				t.Fatalf("WeightsFor(%d) = %v; want %v", tt.desired, got, tt.want)
			}
		})
	}
}

func TestWeightsSame(t *testing.T) {
	tests := []struct {
		name      string
		want, now Weights
		same      bool
	}{
		{name: "equal", want: Weights{"stable": 80, "canary": 20}, now: Weights{"stable": 80, "canary": 20}, same: true},
		{name: "a cohort at 0 is one left out", want: Weights{"stable": 100, "canary": 0}, now: Weights{"stable": 100}, same: true},
		{name: "left out on the other side", want: Weights{"stable": 100}, now: Weights{"stable": 100, "canary": 0}, same: true},
		{name: "another weight", want: Weights{"stable": 80, "canary": 20}, now: Weights{"stable": 90, "canary": 10}, same: false},
		{name: "another cohort with a share", want: Weights{"stable": 100, "canary": 0}, now: Weights{"stable": 100, "blue": 5}, same: false},
		{name: "nothing yet", want: Weights{"stable": 100}, now: Weights{}, same: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := tt.want.Same(tt.now); got != tt.same {
				t.Fatalf("%v.Same(%v) = %v; want %v", tt.want, tt.now, got, tt.same)
			}
		})
	}
}

func TestRequestKeepsKnownCohortsAtZero(t *testing.T) {
	tests := []struct {
		name  string
		w     Weights
		known map[string]bool
		want  map[string]uint32
	}{
		{name: "a canary never seen is left out at 0", w: Weights{"stable": 100, "canary": 0},
			known: map[string]bool{"stable": true}, want: map[string]uint32{"stable": 100}},
		{name: "a known canary stays at 0", w: Weights{"stable": 100, "canary": 0},
			known: map[string]bool{"stable": true, "canary": true}, want: map[string]uint32{"stable": 100, "canary": 0}},
		{name: "shares are sent whether known or not", w: Weights{"stable": 80, "canary": 20},
			known: nil, want: map[string]uint32{"stable": 80, "canary": 20}},
		{name: "a stable cohort gone is left out at 0", w: Weights{"stable": 0, "canary": 100},
			known: map[string]bool{"canary": true}, want: map[string]uint32{"canary": 100}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := tt.w.Request(tt.known)
			if len(got) != len(tt.want) {
				t.Fatalf("%v.Request(%v) = %v; want %v", tt.w, tt.known, got, tt.want)
			}
			for cohort, weight := range tt.want {
				if w, ok := got[cohort]; !ok || w != weight {
					t.Fatalf("%v.Request(%v) = %v; want %v", tt.w, tt.known, got, tt.want)
				}
			}
		})
	}
}

func TestWeightsString(t *testing.T) {
	if got := (Weights{"stable": 80, "canary": 20}).String(); got != "canary=20 stable=80" {
		t.Errorf("String() = %q", got)
	}
	if got := (Weights{}).String(); got != "(none)" {
		t.Errorf("String() of none = %q", got)
	}
}
