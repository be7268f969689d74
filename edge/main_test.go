package edge

import (
	"testing"

	"github.com/flashgate/flashgate/lib/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }
