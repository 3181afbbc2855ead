"""What every stage uses: errors and exit codes, the termination message, object storage, and the process helpers.

Why at the bottom: the training run, the validation Job, the model server, the adapters sidecar and the
`fetch` init container all report failures the same way (`errors`, `termination`), read and write S3 the same
way (`storage`), and size their threads (`cpus`) and ranks (`distributed`) the same way. Nothing here imports
any other part of the package.
"""
