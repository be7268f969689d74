package main

import (
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The deployment examples pass only flags this binary has: a renamed flag
// would otherwise break them silently (flashgate exits on an unknown flag,
// but only on the cluster).
func TestDeployExamplesUseRealFlags(t *testing.T) {
	files, err := filepath.Glob("deploy/systemd/*")
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, "deploy/kubernetes/flashgate.yaml")
	// Options of other programs in those files (sh, sysctl, ulimit).
	others := map[string]bool{"c": true, "w": true, "n": true, "euo": true}
	flagRE := regexp.MustCompile(`(?:^|[\s"\[])--?([a-z][A-Za-z0-9.-]*)`)
	checked := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "#") {
				continue
			}
			for _, m := range flagRE.FindAllStringSubmatch(line, -1) {
				name := m[1]
				if others[name] {
					continue
				}
				checked++
				if flag.CommandLine.Lookup(name) == nil {
					t.Errorf("%s:%d: -%s is not a flag of flashgate", f, i+1, name)
				}
			}
		}
	}
	if checked < 30 {
		t.Fatalf("only %d flags found in the deployment examples: the scan is broken", checked)
	}
}
