package edge

import (
	"os"
	"strconv"
	"testing"

	"github.com/flashgate/flashgate/lib/testenv"
)

func TestMain(m *testing.M) {
	if addr := os.Getenv(attackEnv); addr != "" {
		slow, _ := strconv.Atoi(os.Getenv("FLASHGATE_TEST_ATTACK_SLOW"))
		attack(addr, slow)
		os.Exit(0)
	}
	testenv.Main(m)
}
