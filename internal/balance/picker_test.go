package balance

import (
	"testing"
)

// fake is a Candidate whose usability and load the test sets.
type fake struct {
	load, workers uint32
	unusable      bool // its connection takes no new calls (Usable)
	closed        bool // its instance takes no calls (Load's ok)
}

func (f *fake) Usable() bool { return !f.unusable }

func (f *fake) Load() (uint32, uint32, bool) { return f.load, f.workers, !f.closed }

// picks returns how many of n picks went to each candidate; -1 results
// are counted in the last element.
func picks(p *Picker, cs []*fake, n int) []int {
	counts := make([]int, len(cs)+1)
	for range n {
		i := Pick(p, cs)
		if i < 0 {
			i = len(cs)
		}
		counts[i]++
	}
	return counts
}

const nPicks = 10000

// With two candidates both are compared on every pick, so the one more
// loaded per worker is never picked while the other is usable; with
// three, the most loaded loses whichever pair it is drawn in.
func TestLeastLoadNeverPicksTheMoreLoaded(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cs     []*fake
		loaded int // the index that must get no pick
	}{
		{"second more loaded", []*fake{{load: 1, workers: 1}, {load: 2, workers: 1}}, 1},
		{"first more loaded", []*fake{{load: 7, workers: 2}, {load: 0, workers: 2}}, 0},
		{"by one call in many", []*fake{{load: 1000, workers: 8}, {load: 1001, workers: 8}}, 1},
		// 3 in flight on 4 workers (0.75 each) is less than 1 on 1.
		{"per worker", []*fake{{load: 1, workers: 1}, {load: 3, workers: 4}}, 0},
		// Of three, the most loaded loses every pair it is in.
		{"three of three", []*fake{{load: 2, workers: 1}, {load: 3, workers: 1}, {load: 1, workers: 1}}, 1},
	} {
		var p Picker
		got := picks(&p, tc.cs, nPicks)
		if got[tc.loaded] != 0 || got[len(tc.cs)] != 0 {
			t.Errorf("%s: picks %v: the most loaded got %d, none %d; want 0 and 0", tc.name, got[:len(tc.cs)], got[tc.loaded], got[len(tc.cs)])
		}
	}
}

// Equal load per worker is a tie, which either side may win: load 4 on 4
// workers against load 1 on 1, and equal loads, share the picks.
func TestLeastLoadWeighsWorkers(t *testing.T) {
	for _, cs := range [][]*fake{
		{{load: 4, workers: 4}, {load: 1, workers: 1}},
		{{load: 1, workers: 1}, {load: 4, workers: 4}},
		{{load: 0, workers: 1}, {load: 0, workers: 16}},
		{{load: 6, workers: 2}, {load: 9, workers: 3}},
	} {
		var p Picker
		got := picks(&p, cs, nPicks)
		for i := range cs {
			if got[i] < nPicks/4 {
				t.Errorf("loads %d/%d and %d/%d are equal per worker, but the picks are %v", cs[0].load, cs[0].workers, cs[1].load, cs[1].workers, got[:len(cs)])
				break
			}
		}
	}
}

// A candidate that is not usable, or whose instance takes no calls, is
// never picked, however little loaded; with none usable Pick returns -1.
// A lone candidate is judged the same way: one that drains takes no call.
func TestPickSkipsUnusable(t *testing.T) {
	for _, policy := range []Policy{LeastLoad, RoundRobin, PickFirst} {
		t.Run(policy.String(), func(t *testing.T) {
			for _, tc := range []struct {
				name string
				cs   []*fake
				want []int // picks each may get: -1 any, else exactly
			}{
				{"unusable idle one", []*fake{{load: 9, workers: 1}, {unusable: true}}, []int{nPicks, 0, 0}},
				{"closed idle one", []*fake{{closed: true}, {load: 9, workers: 1}}, []int{0, nPicks, 0}},
				{"one of three usable", []*fake{{unusable: true}, {closed: true}, {load: 50, workers: 1}}, []int{0, 0, nPicks, 0}},
				{"two of three usable", []*fake{{load: 1, workers: 1}, {unusable: true}, {load: 1, workers: 1}}, []int{-1, 0, -1, 0}},
				{"only one, unusable", []*fake{{unusable: true}}, []int{0, nPicks}},
				{"only one, draining", []*fake{{closed: true}}, []int{0, nPicks}},
				{"none usable", []*fake{{unusable: true}, {closed: true}, {unusable: true, closed: true}}, []int{0, 0, 0, nPicks}},
				{"none at all", nil, []int{nPicks}},
			} {
				p := Picker{Policy: policy}
				got := picks(&p, tc.cs, nPicks)
				for i, w := range tc.want {
					if w >= 0 && got[i] != w {
						t.Errorf("%s: picks %v (last: none), want %v", tc.name, got, tc.want)
						break
					}
				}
			}
		})
	}
}

// RoundRobin gives each of 3 usable candidates the same share, whatever
// their loads.
func TestRoundRobinEqualShares(t *testing.T) {
	cs := []*fake{{load: 100, workers: 1}, {load: 0, workers: 1}, {load: 5, workers: 2}}
	p := Picker{Policy: RoundRobin}
	got := picks(&p, cs, 3*nPicks)
	for i := range cs {
		if got[i] != nPicks {
			t.Fatalf("picks %v, want %d each", got[:len(cs)], nPicks)
		}
	}
}

// PickFirst always takes the first usable candidate, in the order given,
// whatever the loads.
func TestPickFirstTakesFirstUsable(t *testing.T) {
	for _, tc := range []struct {
		cs   []*fake
		want int
	}{
		{[]*fake{{load: 100, workers: 1}, {load: 0, workers: 1}, {load: 0, workers: 1}}, 0},
		{[]*fake{{unusable: true}, {load: 100, workers: 1}, {load: 0, workers: 1}}, 1},
		{[]*fake{{closed: true}, {unusable: true}, {load: 3, workers: 1}}, 2},
	} {
		p := Picker{Policy: PickFirst}
		if got := picks(&p, tc.cs, nPicks); got[tc.want] != nPicks {
			t.Errorf("picks %v, want all %d on %d", got, nPicks, tc.want)
		}
	}
}

// Pick allocates nothing, with any policy.
func TestPickAllocatesNothing(t *testing.T) {
	cs := []*fake{{load: 3, workers: 2}, {unusable: true}, {load: 1, workers: 1}}
	for _, policy := range []Policy{LeastLoad, RoundRobin, PickFirst} {
		p := Picker{Policy: policy}
		if n := testing.AllocsPerRun(1000, func() { Pick(&p, cs) }); n != 0 {
			t.Errorf("%s: %v allocations per Pick, want 0", policy, n)
		}
	}
}
