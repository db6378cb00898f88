# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_tokenkeeper_global_optspecs
    string join \n h/help V/version
end

function __fish_tokenkeeper_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_tokenkeeper_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_tokenkeeper_using_subcommand
    set -l cmd (__fish_tokenkeeper_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -s V -l version -d 'Print version'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "run" -d 'Run the daemon in the foreground until SIGTERM or SIGINT'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "check" -d 'Validate the configuration and the secrets it names; exit 0 or 78. Warns when a provider\'s discovery metadata does not list its auth_method'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "revoke" -d 'Revoke the tokens recorded in the state journal (all sets, or those named), after a crash or before decommissioning a machine. Refuses while the daemon runs'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "once" -d 'Make sure each set (all by default) has a token in its file valid for at least --min-remaining, reusing the journaled one when it qualifies; then exit. Never revokes'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "exec" -d 'Run CMD with fresh tokens for the chosen sets, kept fresh while it runs, revoked when it exits; exit with its status'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "status" -d 'Show each set\'s state, from the running daemon\'s status file; exit 0 if it runs, 3 if not'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "demo" -d 'Try it without credentials: a local development provider plus the daemon'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "dev-provider" -d 'Run the Voucherify-compatible development provider alone'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "completions" -d 'Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell)'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "manpage" -d 'Print the man page, tokenkeeper(1); with --dir, write it and one page per subcommand (tokenkeeper-run(1), ...) there. For packagers'
complete -c tokenkeeper -n "__fish_tokenkeeper_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand run" -s c -l config -d 'Configuration file' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand run" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand check" -s c -l config -d 'Configuration file' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand check" -l credentials-dir -d 'Outside the service, where to look for each `{ credential: NAME }` (the folder the unit\'s LoadCredential= loads)' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand check" -l offline -d 'Do not fetch the providers\' discovery metadata'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand check" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand revoke" -s c -l config -d 'Configuration file' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand revoke" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand once" -s c -l config -d 'Configuration file' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand once" -l min-remaining -d 'Least validity left for a token to be reused (default: half of its lifetime)' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand once" -l timeout -d 'Give up on sets without a token after this long' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand once" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand exec" -s c -l config -d 'Configuration file' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand exec" -l set -d 'A scope set to give CMD (repeat for more); all by default' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand exec" -l start-timeout -d 'Give up without running CMD if the tokens are not there within this long' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand exec" -l env-token -d 'Also export each token as TOKENKEEPER_<SET>_TOKEN (it is not refreshed in the environment: long-running commands should read the file)'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand exec" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand status" -s c -l config -d 'Configuration file' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand status" -l json -d 'Machine-readable output'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand status" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand demo" -l dir -d 'Folder for the demo\'s token files and config' -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand demo" -l lifetime -d 'Lifetime of the demo\'s tokens' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand demo" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand dev-provider" -l listen -d 'Address to listen on' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand dev-provider" -l lifetime -d 'Lifetime of issued tokens (whole seconds)' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand dev-provider" -l app-id -d 'The `X-App-Id` clients must send' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand dev-provider" -l app-token -d 'The `X-App-Token` clients must send' -r
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand dev-provider" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand completions" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand manpage" -l dir -r -F
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand manpage" -s h -l help -d 'Print help'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "run" -d 'Run the daemon in the foreground until SIGTERM or SIGINT'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "check" -d 'Validate the configuration and the secrets it names; exit 0 or 78. Warns when a provider\'s discovery metadata does not list its auth_method'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "revoke" -d 'Revoke the tokens recorded in the state journal (all sets, or those named), after a crash or before decommissioning a machine. Refuses while the daemon runs'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "once" -d 'Make sure each set (all by default) has a token in its file valid for at least --min-remaining, reusing the journaled one when it qualifies; then exit. Never revokes'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "exec" -d 'Run CMD with fresh tokens for the chosen sets, kept fresh while it runs, revoked when it exits; exit with its status'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "status" -d 'Show each set\'s state, from the running daemon\'s status file; exit 0 if it runs, 3 if not'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "demo" -d 'Try it without credentials: a local development provider plus the daemon'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "dev-provider" -d 'Run the Voucherify-compatible development provider alone'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "completions" -d 'Print the shell completion script for SHELL (bash, zsh, fish, elvish, powershell)'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "manpage" -d 'Print the man page, tokenkeeper(1); with --dir, write it and one page per subcommand (tokenkeeper-run(1), ...) there. For packagers'
complete -c tokenkeeper -n "__fish_tokenkeeper_using_subcommand help; and not __fish_seen_subcommand_from run check revoke once exec status demo dev-provider completions manpage help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
