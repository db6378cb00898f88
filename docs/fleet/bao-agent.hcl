# OpenBao Agent (or Vault Agent: same file, `vault agent -config=...`) on a fleet VM: renders
# the token tokenkeeper keeps at secret/tokenkeeper/orders-sync into the file a legacy app
# reads, and renders it again within a few seconds of each rotation.
#
# Run it as a service: `bao agent -config=/etc/bao-agent/agent.hcl`.
# tests/agent.rs runs this very file against a real OpenBao server.

pid_file = "/run/bao-agent/agent.pid"

vault {
  address = "https://bao.internal:8200"
  # ca_cert = "/etc/bao-agent/ca.pem"
}

# The VM's own read-only identity: an AppRole whose policy may only read the fleet's paths:
#   path "secret/data/tokenkeeper/*" { capabilities = ["read"] }
auto_auth {
  method "approle" {
    config = {
      role_id_file_path                   = "/etc/bao-agent/role-id"
      secret_id_file_path                 = "/etc/bao-agent/secret-id"
      remove_secret_id_file_after_reading = false
    }
  }
}

# KV secrets have no lease, so the agent re-reads them on this interval. tokenkeeper keeps
# the old token valid for revoke_superseded_after (60 s by default) after a rotation: an
# interval well under that means the app never holds a revoked token.
template_config {
  static_secret_render_interval = "5s"
}

template {
  # The raw token, no newline: what tokenkeeper's `format: raw` file would hold.
  contents    = "{{ with secret \"secret/data/tokenkeeper/orders-sync\" }}{{ .Data.data.access_token }}{{ end }}"
  destination = "/run/legacy-app/orders-sync.token"
  perms       = "0640"
  # command   = "systemctl reload legacy-app"
}
