package main

import (
	"context"
	"errors"
)

// runTracegen is `flashgate tracegen` (being written).
func runTracegen(ctx context.Context) error { return errors.New("tracegen: not available yet") }
