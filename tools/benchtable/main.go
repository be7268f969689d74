// Command benchtable summarises `go test -bench` output: the median of each
// benchmark over its runs and, for benchmarks with a "flashgate" sub-benchmark
// and "peer-*" siblings, flashgate's speed as a ratio to each peer measured in
// the same run (> 1: flashgate is faster).
//
//	go run ./tools/benchtable bench/out.txt
package main

import (
	"bufio"
	"fmt"
	"os"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

var line = regexp.MustCompile(`^(Benchmark\S+?)(?:-\d+)?\s+\d+\s+(.*)$`)

type sample map[string][]float64 // unit -> values

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: benchtable <go test -bench output file>")
		os.Exit(2)
	}
	f, err := os.Open(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
	defer f.Close()
	results := map[string]sample{}
	var order []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		m := line.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		name := m[1]
		if results[name] == nil {
			results[name] = sample{}
			order = append(order, name)
		}
		fields := strings.Fields(m[2])
		for i := 0; i+1 < len(fields); i += 2 {
			if v, err := strconv.ParseFloat(fields[i], 64); err == nil {
				results[name][fields[i+1]] = append(results[name][fields[i+1]], v)
			}
		}
	}
	fmt.Printf("%-52s %14s %12s %10s  %s\n", "benchmark (median of runs)", "ns/op", "allocs/op", "runs", "extra")
	for _, name := range order {
		s := results[name]
		extra := ""
		for unit, vs := range s {
			if unit != "ns/op" && unit != "allocs/op" && unit != "B/op" && unit != "MB/s" {
				extra += fmt.Sprintf("%.0f %s ", median(vs), unit)
			}
		}
		fmt.Printf("%-52s %14.1f %12.0f %10d  %s\n", name, median(s["ns/op"]), median(s["allocs/op"]), len(s["ns/op"]), extra)
	}
	fmt.Printf("\n%-52s %12s\n", "flashgate vs peer (peer ns/op / flashgate ns/op)", "ratio")
	for _, name := range order {
		parent, ok := strings.CutSuffix(name, "/flashgate")
		if !ok {
			continue
		}
		var peers []string
		for _, other := range order {
			if strings.HasPrefix(other, parent+"/peer-") {
				peers = append(peers, other)
			}
		}
		sort.Strings(peers)
		for _, p := range peers {
			ratio := median(results[p]["ns/op"]) / median(results[name]["ns/op"])
			fmt.Printf("%-52s %11.2fx\n", strings.TrimPrefix(p, "Benchmark"), ratio)
		}
	}
}

func median(vs []float64) float64 {
	if len(vs) == 0 {
		return 0
	}
	s := append([]float64(nil), vs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}
