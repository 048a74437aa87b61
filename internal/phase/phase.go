// Package phase times the consecutive stretches of a checkpoint or a
// restart, for `-v` reports and the benchmarks' cost breakdown.
package phase

import (
	"fmt"
	"strings"
	"time"
)

// Phase is a named stretch of work.
type Phase struct {
	Name string
	Dur  time.Duration
}

// Phases records consecutive phases: each Mark ends the current one. The
// zero value records nothing until Start; a nil *Phases ignores marks.
type Phases struct {
	List []Phase
	last time.Time
}

// Start begins the first phase.
func (p *Phases) Start() {
	if p != nil {
		p.last = time.Now()
	}
}

// Mark ends the phase running since the last mark and names it.
func (p *Phases) Mark(name string) {
	if p == nil || p.last.IsZero() {
		return
	}
	now := time.Now()
	p.List = append(p.List, Phase{name, now.Sub(p.last)})
	p.last = now
}

// String is "name 1.2ms, name 3.4ms".
func (p Phases) String() string {
	var parts []string
	for _, ph := range p.List {
		parts = append(parts, fmt.Sprintf("%s %v", ph.Name, ph.Dur.Round(10*time.Microsecond)))
	}
	return strings.Join(parts, ", ")
}
