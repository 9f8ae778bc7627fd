// Command argo-rollouts-plugin is the Argo Rollouts traffic router plugin for
// fanout-gateway ("fanout-gateway/fanout"): the controller starts it and calls it over
// hashicorp/go-plugin's net/rpc. See README.md.
package main

import (
	"log/slog"
	"os"

	rolloutsPlugin "github.com/argoproj/argo-rollouts/rollout/trafficrouting/plugin/rpc"
	goPlugin "github.com/hashicorp/go-plugin"

	"github.com/fanout-gateway/fanout-gateway/argo-rollouts-plugin/internal/plugin"
)

func main() {
	// The controller copies the plugin's stderr into its own log.
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	goPlugin.Serve(&goPlugin.ServeConfig{
		HandshakeConfig: plugin.Handshake,
		Plugins: map[string]goPlugin.Plugin{
			plugin.RPCName: &rolloutsPlugin.RpcTrafficRouterPlugin{Impl: &plugin.Plugin{Log: log.With("plugin", plugin.Name)}},
		},
	})
}
