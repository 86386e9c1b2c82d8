package policy

import (
	"testing"
)

// Every expression of the policies stays within the apiserver's per-expression limit,
// and each policy's evaluation within its budget, on the reference pods (the largest:
// 200 containers with every env key and the ambassador), as the apiserver's cost
// tracking charges them; and the costs are those the apiserver charges a whole
// evaluation (runtimeCost, through the apiserver's own variable composition).
func TestRuntimeCostsWithinLimits(t *testing.T) {
	pols := rendered(t, nil)
	ns := ReferenceNamespace()
	var small int64
	for i, rp := range ReferencePods() {
		costs, err := RuntimeCosts(pols, rp.Pod, ns)
		if err != nil {
			t.Fatal(err)
		}
		total := map[string]int64{}
		var max Cost
		for _, c := range costs {
			total[c.Policy] += c.Cost
			if c.Cost > PerExpressionLimit {
				t.Errorf("%s: %s %s costs %d, above the apiserver's limit of %d per expression", rp.Name, c.Policy, c.Expression, c.Cost, PerExpressionLimit)
			}
			if c.Cost > max.Cost {
				max = c
			}
		}
		for p, sum := range total {
			if sum > PerEvaluationBudget {
				t.Errorf("%s: %s costs %d in all, above the apiserver's budget of %d per evaluation", rp.Name, p, sum, PerEvaluationBudget)
			}
		}
		t.Logf("%s: MAP %d, VAP %d in all; the largest: %s %d (limit %d)", rp.Name, total[pols.Mutating.Name], total[pols.Validating.Name], max.Expression, max.Cost, PerExpressionLimit)
		// Eager evaluation of every variable costs at least what the apiserver's lazy
		// composition charges, and not much more.
		charged := runtimeCost(t, pols, rp.Pod)
		if m := total[pols.Mutating.Name]; m < charged || m > charged*11/10 {
			t.Errorf("%s: the expressions' costs add up to %d; the apiserver charges the evaluation %d", rp.Name, m, charged)
		}
		if i == 0 {
			small = total[pols.Mutating.Name]
		} else if total[pols.Mutating.Name] <= small {
			t.Errorf("the costs do not grow with the pod (%d, %d): are they measured?", small, total[pols.Mutating.Name])
		}
	}
}
