-- The warehouse view llm_cost_daily (by UTC day and workspace), as a dbt model.
select * from {{ source('etl', 'llm_cost_daily') }}
