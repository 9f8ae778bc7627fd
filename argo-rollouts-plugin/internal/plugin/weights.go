package plugin

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/argoproj/argo-rollouts/pkg/apis/rollouts/v1alpha1"
)

// Weights is a route's cohort weights: cohort (value of the route's split label) to weight.
type Weights map[string]uint32

// WeightsFor maps a Rollout's desired canary weight (percent, 0 to 100) to the route's
// cohort weights: the canary cohort gets desired, the stable cohort the rest. The whole set
// is the route's: any other cohort the route had is left out, so it gets nothing.
//
// Additional destinations (an experiment's weighted services) have no cohort of their own
// here and are refused, as is a weight outside 0..100.
func WeightsFor(cfg Config, desired int32, additional []v1alpha1.WeightDestination) (Weights, error) {
	if desired < 0 || desired > 100 {
		return nil, fmt.Errorf("desired weight %d is outside 0..100", desired)
	}
	if len(additional) > 0 {
		names := make([]string, 0, len(additional))
		for _, d := range additional {
			names = append(names, fmt.Sprintf("%s=%d", d.ServiceName, d.Weight))
		}
		return nil, fmt.Errorf(
			"additional destinations (%s) are not supported: the gateway splits route %q between its %q and %q cohorts only; run experiments without weights",
			strings.Join(names, ", "), cfg.Route, cfg.StableCohort, cfg.CanaryCohort)
	}
	return Weights{cfg.StableCohort: uint32(100 - desired), cfg.CanaryCohort: uint32(desired)}, nil
}

// Request is what SetWeights is sent for w, given the cohorts every replica knows (those
// its Status lists for the route). A cohort at 0 stays in the weights when it is known, so
// the route keeps it (and a later share for it, with its subscribers gone, is refused as an
// empty cohort, not as a misspelt one); one that is not known yet is left out, which the
// gateway treats the same as 0 and which it accepts, where naming a cohort it has never
// seen, even at 0, is refused as a likely typo.
func (w Weights) Request(known map[string]bool) map[string]uint32 {
	out := make(map[string]uint32, len(w))
	for cohort, weight := range w {
		if weight > 0 || known[cohort] {
			out[cohort] = weight
		}
	}
	return out
}

// Same reports whether a route's weights now (as a replica's Status shows them) are w, a
// cohort absent on one side counting as 0 on it.
func (w Weights) Same(now Weights) bool {
	for cohort, weight := range w {
		if now[cohort] != weight {
			return false
		}
	}
	for cohort, weight := range now {
		if w[cohort] != weight {
			return false
		}
	}
	return true
}

// String is "canary=20 stable=80": cohorts by name, those at 0 included.
func (w Weights) String() string {
	parts := make([]string, 0, len(w))
	for _, cohort := range slices.Sorted(maps.Keys(w)) {
		parts = append(parts, fmt.Sprintf("%s=%d", cohort, w[cohort]))
	}
	if len(parts) == 0 {
		return "(none)"
	}
	return strings.Join(parts, " ")
}
