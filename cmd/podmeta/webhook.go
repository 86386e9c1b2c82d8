package main

import (
	"context"
	"errors"
)

func runWebhook(ctx context.Context, args []string, s streams) error {
	return errors.New("the webhook server is not built yet")
}
