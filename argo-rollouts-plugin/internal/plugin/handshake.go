package plugin

import goPlugin "github.com/hashicorp/go-plugin"

// Handshake is what the Argo Rollouts controller expects of a traffic router plugin.
var Handshake = goPlugin.HandshakeConfig{
	ProtocolVersion:  1,
	MagicCookieKey:   "ARGO_ROLLOUTS_RPC_PLUGIN",
	MagicCookieValue: "trafficrouter",
}

// RPCName is the name the controller dispenses a traffic router plugin by.
const RPCName = "RpcTrafficRouterPlugin"
