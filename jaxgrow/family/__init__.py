"""The family wing: the progressive/independent pipeline over stages, budgets (the paper's cost rule),
growth between members, the workdir layout, passes over the data. The only code that knows there are
several stages; imports train, eval, serve, interop and everything below them."""
