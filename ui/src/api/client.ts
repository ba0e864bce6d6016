// The typed client of the gateway's REST API. Its types come from the
// committed openapi.json (`npm run api-types`), so a change of the API that
// the UI does not follow fails the type check.
import createClient from "openapi-fetch";
import type { components, paths } from "./schema";

export type Schemas = components["schemas"];
export type Project = Schemas["ProjectOut"];
export type Workflow = Schemas["WorkflowOut"];
export type JobListed = Schemas["JobListed"];
export type JobDetail = Schemas["JobDetail"];
export type ProcessOut = Schemas["ProcessOut"];
export type StepDefinition = Schemas["StepDefinition"];
export type TransitionDefinition = Schemas["TransitionDefinition"];
export type WorkflowDefinition = Schemas["WorkflowDefinition"];
export type FunctionOut = Schemas["FunctionOut"];
export type Problem = Schemas["Problem"];
export type StepOut = Schemas["StepOut"];

export const api = createClient<paths>({ baseUrl: window.location.origin });

/** An error answer of the API: its problem details, with the fields it names. */
export class ApiError extends Error {
  readonly problem: Problem;

  constructor(problem: Problem) {
    super(problem.detail || problem.title);
    this.problem = problem;
  }

  /** The message for one field (`steps[0].next[1].when`), if the API named it. */
  fieldError(field: string): string | undefined {
    return this.problem.errors?.find((e) => e.field === field)?.message;
  }
}

function asProblem(error: unknown, status: number): Problem {
  if (error && typeof error === "object" && "detail" in error) {
    return error as Problem;
  }
  return {
    type: "about:blank",
    title: "Error",
    status,
    detail: typeof error === "string" && error ? error : `the server answered ${status}`,
    instance: null,
    reference: null,
  };
}

/** The data of an openapi-fetch answer, or an ApiError with its problem details. */
export function unwrap<T>(result: { data?: T; error?: unknown; response: Response }): T {
  if (result.error !== undefined || !result.response.ok) {
    throw new ApiError(asProblem(result.error, result.response.status));
  }
  return result.data as T;
}

/** The quoted revision of a draft answer's ETag header, for the next If-Match. */
export function etagOf(response: Response): string {
  return response.headers.get("ETag") ?? "";
}
