-- The warehouse view rag_latency (by UTC day and workspace), as a dbt model.
select * from {{ source('etl', 'rag_latency') }}
