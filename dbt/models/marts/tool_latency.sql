-- The warehouse view tool_latency (by UTC day and workspace), as a dbt model.
select * from {{ source('etl', 'tool_latency') }}
