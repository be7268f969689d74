package main

import (
	"context"
	"errors"
)

// runReplay is `flashgate replay` (being written).
func runReplay(ctx context.Context) error { return errors.New("replay: not available yet") }
